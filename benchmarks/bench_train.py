"""Training throughput of a DALLE text-to-image model: images in (frozen codec encodes every step) vs. a
token cache (the encoder is skipped), in images/s, image tokens/s, ms/step and peak memory.

    python benchmarks/bench_train.py                      # tiny codec (16x16 -> 4x4 tokens), seconds
    python benchmarks/bench_train.py --codec f8 --steps 3 # released-size f8 Gumbel codec (256 -> 32x32), slow on CPU
    python benchmarks/bench_train.py --device cuda --amp  # GPU, bf16 autocast, fused AdamW, TF32

Model: ``configs/tiny_text_shapes.yaml`` (1 layer, width 32) with random weights for every part (a random
tiny CLIP text tower with the real vocabulary, a random taming codec); ``--layers``/``--width`` grow the
diffusion network. Data: the synthetic captioned shapes. One step = DataLoader batch -> forward (codec
encoding, CLIP, diffusion loss) -> backward -> AdamW step. Each mode runs in its own subprocess so that its
peak memory is its own (CPU: peak resident set size; CUDA: ``torch.cuda.max_memory_allocated``).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

FIXTURE_F8 = REPO.parent / "shared" / "fixtures" / "official_configs" / "taming_dvae__taming_f8_8192_openimages.yaml"


def write_parts(tmp: Path, codec: str) -> dict:
    """Random tiny CLIP text tower + a taming codec YAML under ``tmp``; returns the config overrides."""
    from vqdiff.modeling.embeddings.clip_model import CLIPTextConfig, CLIPTextTransformer
    from vqdiff.utils.config import load_yaml_config, save_yaml_config

    torch.manual_seed(0)
    clip = CLIPTextTransformer(CLIPTextConfig(49408, 77, 32, 1, 1, 32))
    torch.save(clip.state_dict(), tmp / "clip_tiny.pt")
    if codec == "tiny":
        dd = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 2],
                  num_res_blocks=1, attn_resolutions=[], dropout=0.0)
        save_yaml_config({"model": {"target": "vqdiff.modeling.codecs.image.vqgan.VQModel",
                                    "params": {"embed_dim": 8, "n_embed": 16, "ddconfig": dd}}}, tmp / "vq.yaml")
        return {"target": "vqdiff.modeling.codecs.image.taming_vqvae.TamingVQVAE", "num_tokens": 16, "side": 4,
                "resolution": 16}
    if not FIXTURE_F8.is_file():
        raise FileNotFoundError(f"--codec f8 needs the taming f8 YAML at {FIXTURE_F8}")
    save_yaml_config(load_yaml_config(FIXTURE_F8), tmp / "vq.yaml")
    return {"target": "vqdiff.modeling.codecs.image.taming_vqvae.TamingGumbelVQVAE", "num_tokens": 8192, "side": 32,
            "resolution": 256}


def build_config(tmp: Path, part: dict, layers: int, width: int, batch_size: int) -> dict:
    from vqdiff.utils.config import load_yaml_config

    cfg = load_yaml_config(REPO / "configs" / "tiny_text_shapes.yaml")
    mp = cfg["model"]["params"]
    side, k = part["side"], part["num_tokens"]
    mp["content_codec_config"]["target"] = part["target"]
    mp["content_codec_config"]["params"].update(config_path=str(tmp / "vq.yaml"), ckpt_path=None, num_tokens=k,
                                                token_shape=[side, side])
    dp = mp["diffusion_config"]["params"]
    tp = dp["transformer_config"]["params"]
    tp.update(n_layer=layers, n_embd=width, n_head=max(1, width // 16), content_seq_len=side * side,
              content_spatial_size=[side, side])
    dp["condition_emb_config"]["params"]["clip_path"] = str(tmp / "clip_tiny.pt")
    dp["content_emb_config"]["params"].update(num_embed=k, spatial_size=[side, side], embed_dim=width)
    cfg["dataloader"]["batch_size"] = batch_size
    return cfg


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps (after ``args.warmup``) in this process."""
    from torch.utils.data import DataLoader

    from vqdiff.data.build import collate_batch
    from vqdiff.data.synthetic import ShapesDataset
    from vqdiff.data.token_cache import TokenCacheDataset, write_token_cache
    from vqdiff.engine.optim import build_optimizer
    from vqdiff.utils.config import instantiate_from_config

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(args.workdir)
    part = write_parts(tmp, args.codec)
    cfg = build_config(tmp, part, args.layers, args.width, args.batch_size)
    torch.manual_seed(0)
    model = instantiate_from_config(cfg["model"], key_path="model").to(device)
    model.train()
    n_items = args.batch_size * (args.steps + args.warmup)
    ds = ShapesDataset(n_items, part["resolution"], split="all")
    if mode == "tokens":
        cache = tmp / "cache"
        if not (cache / "meta.json").exists():
            write_token_cache(ds, model.content_codec, cache, batch_size=args.batch_size, device=device,
                              progress=False, overwrite=True)
        ds = TokenCacheDataset(cache)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, collate_fn=collate_batch,
                        num_workers=args.num_workers, drop_last=True)
    opt_cfg = {"target": "torch.optim.AdamW", "params": {"betas": [0.9, 0.96], "weight_decay": 4.5e-2}}
    if device.type == "cuda":
        opt_cfg["params"]["fused"] = True
    opt = build_optimizer(opt_cfg, model, 1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    t0 = time.perf_counter()
    for i, batch in enumerate(loader):  # a step's time includes fetching its batch (reading / rendering)
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda"):
            loss = model(batch, return_loss=True, step=i)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    timed = times[args.warmup:]
    step_s = sum(timed) / max(1, len(timed))
    n_tok = part["side"] ** 2
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"mode": mode, "codec": args.codec, "resolution": part["resolution"], "tokens_per_image": n_tok,
            "batch_size": args.batch_size, "steps": len(timed), "ms_per_step": 1000 * step_s,
            "images_per_s": args.batch_size / step_s, "tokens_per_s": args.batch_size * n_tok / step_s,
            "peak_memory_mib": peak, "peak_memory_kind": "cuda_allocated" if device.type == "cuda" else "cpu_rss"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", choices=["tiny", "f8"], default="tiny")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("--_mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._mode is not None:  # child: one mode, JSON on the last line
        print(json.dumps(run_mode(args._mode, args)))
        return {}
    rows = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--json")]
    with tempfile.TemporaryDirectory() as d:
        for mode in ("images", "tokens"):
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
            out = subprocess.run([sys.executable, __file__, *passthrough, "--_mode", mode, "--workdir", d],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"benchmark mode {mode} failed:\n{out.stdout}\n{out.stderr}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    speedup = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    print(f"{'input':<8}{'codec':>6}{'res':>5}{'tok/img':>8}{'ms/step':>10}{'img/s':>10}{'tokens/s':>11}{'peak MiB':>10}")
    for r in rows:
        print(f"{r['mode']:<8}{r['codec']:>6}{r['resolution']:>5}{r['tokens_per_image']:>8}{r['ms_per_step']:>10.1f}"
              f"{r['images_per_s']:>10.1f}{r['tokens_per_s']:>11.0f}{r['peak_memory_mib']:>10.0f}")
    print(f"token cache speed-up: {speedup:.2f}x")
    result = {"benchmark": "train", "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                                "cpus": os.cpu_count(), "torch": torch.__version__,
                                                "threads": args.threads or torch.get_num_threads(),
                                                "device": args.device},
              "token_cache_speedup": speedup, "results": rows}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
