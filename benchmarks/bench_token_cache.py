"""Images/s of encoding images with the frozen codec on every step vs. reading a token cache.

    python benchmarks/bench_token_cache.py              # tiny codec + released-size f8 Gumbel codec
    python benchmarks/bench_token_cache.py --skip-big   # tiny codec only (seconds)

Both codecs have random weights (the timing does not depend on them): a tiny taming VQModel on 16x16
shapes (4x4 tokens) and the released OpenImages f8 GumbelVQ architecture (taming_f8_8192_openimages.yaml
from the fixtures, 256x256 images, 32x32 tokens). "on the fly" = render/load the image + codec.get_tokens,
per batch, as a training step without a cache pays; "cache" = a DataLoader over TokenCacheDataset.
Prints a table and one JSON line (also peak resident memory of the process).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from vqdiff.data.build import collate_batch
from vqdiff.data.synthetic import ShapesDataset
from vqdiff.data.token_cache import TokenCacheDataset, write_token_cache
from vqdiff.modeling.codecs.image.taming_vqvae import TamingGumbelVQVAE, TamingVQVAE
from vqdiff.utils.config import load_yaml_config, save_yaml_config

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official_configs" / \
    "taming_dvae__taming_f8_8192_openimages.yaml"


def tiny_codec(tmp: Path) -> TamingVQVAE:
    dd = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1],
              num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    save_yaml_config({"model": {"target": "image_synthesis.taming.models.vqgan.VQModel", "params": {
        "ddconfig": dd, "n_embed": 16, "embed_dim": 8,
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}}}, tmp / "tiny.yaml")
    return TamingVQVAE(config_path=str(tmp / "tiny.yaml"), ckpt_path=None, num_tokens=16, quantize_number=0,
                       mapping_path=None, token_shape=[4, 4])


def big_codec(yaml_path: Path, tmp: Path) -> TamingGumbelVQVAE:
    cfg = load_yaml_config(yaml_path)
    save_yaml_config(cfg, tmp / "f8.yaml")
    return TamingGumbelVQVAE(config_path=str(tmp / "f8.yaml"), ckpt_path=None, num_tokens=8192,
                             quantize_number=0, mapping_path=None, token_shape=[32, 32])


def on_the_fly(ds, codec, batch_size: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate_batch)
    t0 = time.perf_counter()
    n = 0
    with torch.no_grad():
        for batch in loader:
            codec.get_tokens(batch["image"])
            n += batch["image"].shape[0]
    return n / (time.perf_counter() - t0)


def from_cache(cache_dir: Path, batch_size: int, repeats: int) -> float:
    ds = TokenCacheDataset(cache_dir)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate_batch)
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for batch in loader:
            n += batch["content_token"].shape[0]
    return n / (time.perf_counter() - t0)


def run(name: str, codec, resolution: int, num_images: int, batch_size: int, tmp: Path) -> dict:
    torch.set_grad_enabled(False)
    ds = ShapesDataset(num_images, resolution, split="all")
    fly = on_the_fly(ds, codec, batch_size)
    t0 = time.perf_counter()
    cache = write_token_cache(ds, codec, tmp / f"cache_{name}", batch_size=batch_size, progress=False)
    write_s = time.perf_counter() - t0
    cached = from_cache(cache, batch_size, repeats=max(1, 2000 // num_images))
    return {"codec": name, "resolution": resolution, "token_shape": list(codec.token_shape),
            "images": num_images, "batch_size": batch_size, "on_the_fly_img_s": fly, "cache_img_s": cached,
            "speedup": cached / fly, "cache_write_s": write_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-big", action="store_true", help="skip the released-size f8 Gumbel codec")
    ap.add_argument("--big-config", default=str(FIXTURE), help="taming YAML of the big codec")
    ap.add_argument("--big-images", type=int, default=2)
    ap.add_argument("--big-batch", type=int, default=1)
    ap.add_argument("--tiny-images", type=int, default=64)
    ap.add_argument("--tiny-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows.append(run("tiny_vq_f4", tiny_codec(tmp), 16, args.tiny_images, args.tiny_batch, tmp))
        if not args.skip_big:
            if not Path(args.big_config).is_file():
                raise FileNotFoundError(f"--big-config '{args.big_config}' not found (or pass --skip-big)")
            rows.append(run("gumbel_f8_8192", big_codec(Path(args.big_config), tmp), 256, args.big_images,
                            args.big_batch, tmp))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'codec':<16}{'res':>5}{'tokens':>8}{'fly img/s':>12}{'cache img/s':>14}{'speedup':>10}{'write s':>9}")
    for r in rows:
        print(f"{r['codec']:<16}{r['resolution']:>5}{'x'.join(map(str, r['token_shape'])):>8}"
              f"{r['on_the_fly_img_s']:>12.1f}{r['cache_img_s']:>14.1f}{r['speedup']:>9.0f}x{r['cache_write_s']:>9.2f}")
    print(json.dumps({"benchmark": "token_cache", "threads": torch.get_num_threads(), "peak_rss_mib": peak_mib,
                      "results": rows}))


if __name__ == "__main__":
    main()
