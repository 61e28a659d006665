"""Time VQ-Diffusion sampling and training steps on this machine; prints a table and a JSON line.

    python benchmarks/bench_sampling.py                 # reference sizes: 8 layers, width 256, K=1024
    python benchmarks/bench_sampling.py --quick         # small and fast, to check it runs

Measures, for two token grids (8x8 and 16x16): one full sampling step (network + posterior + Gumbel),
full sampling time per image, and a training step from tokens (forward, loss, backward, AdamW).
Uses vqdiff's Text2ImageTransformer when it is importable, else a plain SDPA stand-in of the same shape.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch
from torch import nn
import torch.nn.functional as F

from vqdiff.modeling.diffusion import DiffusionTransformer
from vqdiff.modeling.diffusion import samplers as S
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions


class StandInNet(nn.Module):
    """Pre-LN self + cross attention + MLP blocks with SDPA; (x (B,N), cond (B,L,Dc), t (B,)) -> (B,K,N)."""

    def __init__(self, K, N, T, width, layers, heads, cond_dim):
        super().__init__()
        self.content_seq_len, self.heads = N, heads
        self.emb = nn.Embedding(K + 1, width)
        self.pos = nn.Parameter(torch.zeros(N, width))
        self.temb = nn.Embedding(T, width)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict(dict(
                ln1=nn.LayerNorm(width), qkv=nn.Linear(width, 3 * width), proj1=nn.Linear(width, width),
                ln2=nn.LayerNorm(width), q=nn.Linear(width, width), kv=nn.Linear(cond_dim, 2 * width),
                proj2=nn.Linear(width, width), ln3=nn.LayerNorm(width),
                mlp=nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)))))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, K))

    def _split(self, x):
        B, L, D = x.shape
        return x.view(B, L, self.heads, D // self.heads).transpose(1, 2)

    def precompute_condition(self, cond):
        return [tuple(self._split(z) for z in blk["kv"](cond).chunk(2, -1)) for blk in self.blocks]

    def forward(self, x, cond, t, cond_cache=None):
        cache = cond_cache if cond_cache is not None else self.precompute_condition(cond)
        h = self.emb(x) + self.pos + self.temb(t)[:, None]
        B, N, D = h.shape
        for blk, (k, v) in zip(self.blocks, cache):
            q_, k_, v_ = (self._split(z) for z in blk["qkv"](blk["ln1"](h)).chunk(3, -1))
            h = h + blk["proj1"](F.scaled_dot_product_attention(q_, k_, v_).transpose(1, 2).reshape(B, N, D))
            q_ = self._split(blk["q"](blk["ln2"](h)))
            h = h + blk["proj2"](F.scaled_dot_product_attention(q_, k, v).transpose(1, 2).reshape(B, N, D))
            h = h + blk["mlp"](blk["ln3"](h))
        return self.head(h).transpose(1, 2)


def build(K, side, T, width, layers, heads, cond_dim):
    N = side * side
    try:
        from vqdiff.modeling.transformers.networks import Text2ImageTransformer  # noqa: F401

        cfg = {
            "target": "vqdiff.modeling.transformers.networks.Text2ImageTransformer",
            "params": dict(attn_type="selfcross", n_layer=layers, condition_seq_len=77, content_seq_len=N,
                           content_spatial_size=[side, side], n_embd=width, condition_dim=cond_dim, n_head=heads,
                           attn_pdrop=0.0, resid_pdrop=0.0, block_activate="GELU2", timestep_type="adalayernorm",
                           mlp_hidden_times=4),
        }
        emb = {"target": "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding",
               "params": dict(num_embed=K, spatial_size=[side, side], embed_dim=width, trainable=True,
                              pos_emb_type="embedding")}
        d = DiffusionTransformer(content_emb_config=emb, transformer_config=cfg, diffusion_step=T,
                                 auxiliary_loss_weight=5e-4, adaptive_auxiliary_loss=True)
        return d, "vqdiff Text2ImageTransformer"
    except Exception as e:  # networks not in yet: same-shape stand-in
        net = StandInNet(K, N, T, width, layers, heads, cond_dim)
        d = DiffusionTransformer(content_emb_config={"params": {"num_embed": K}}, transformer_config=net,
                                 diffusion_step=T, auxiliary_loss_weight=5e-4, adaptive_auxiliary_loss=True)
        return d, f"SDPA stand-in ({type(e).__name__})"


def timed(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few steps")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--K", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=100, help="diffusion steps T")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sides", type=int, nargs="+", default=[8, 16])
    args = ap.parse_args()
    if args.quick:
        args.layers, args.width, args.heads, args.K, args.steps, args.repeats = 2, 64, 4, 128, 10, 1
    torch.manual_seed(0)
    B, cond_dim = args.batch, 512
    rows = []
    for side in args.sides:
        d, net_name = build(args.K, side, args.steps, args.width, args.layers, args.heads, cond_dim)
        d.eval()
        cond = torch.randn(B, 77, cond_dim)
        g = torch.Generator().manual_seed(0)
        N, K = side * side, args.K
        x = torch.randint(0, K + 1, (B, N))
        t = torch.full((B,), args.steps // 2)
        options = SamplingOptions(truncation_rate=0.86, generator=g)
        denoise = S.Denoiser(d, cond, None, options)
        cache = d.precompute_condition(cond)

        def net_only():
            with torch.no_grad():
                d._net_log_probs(x, cond, t, cache)

        def one_step():
            S.sample_ancestral(denoise, x, [args.steps // 2, args.steps // 2 - 1], options)

        def full():
            d.sample(condition_embed=cond, filter_ratio=0, truncation_rate=0.86, generator=g)

        net_s = timed(net_only, args.repeats)
        step_s = timed(one_step, args.repeats) / 2  # two steps in one_step
        full_s = timed(full, 1)
        d.train()
        opt = torch.optim.AdamW([p for p in d.parameters() if p.requires_grad], lr=1e-4)
        x0 = torch.randint(0, K, (B, N))

        def train_step():
            loss = d({"content_token": x0, "condition_embed_token": cond}, return_loss=True)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        train_s = timed(train_step, args.repeats)
        rows.append(dict(tokens=f"{side}x{side}", network=net_name, batch=B, network_forward_ms=net_s * 1e3,
                         sampling_step_ms=step_s * 1e3, full_sampling_s_per_image=full_s / B,
                         full_sampling_steps=args.steps, train_step_from_tokens_ms=train_s * 1e3))
    info = dict(machine=platform.platform(), processor=platform.processor(), torch=torch.__version__,
                threads=torch.get_num_threads(), cpus=os.cpu_count(), layers=args.layers, width=args.width,
                heads=args.heads, K=args.K, T=args.steps)
    print(f"machine: {info}")
    print(f"{'tokens':>7} | {'net fwd ms':>10} | {'step ms':>8} | {'full s/img':>10} | {'train ms':>9} | network")
    for r in rows:
        print(f"{r['tokens']:>7} | {r['network_forward_ms']:10.1f} | {r['sampling_step_ms']:8.1f} | "
              f"{r['full_sampling_s_per_image']:10.2f} | {r['train_step_from_tokens_ms']:9.1f} | {r['network']}")
    print(json.dumps({"info": info, "results": rows}))


if __name__ == "__main__":
    main()
