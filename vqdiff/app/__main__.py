"""``python -m vqdiff.app [--config C --ckpt P] [--host 127.0.0.1] [--port 7860] [--device cpu|cuda]``.

Serves the page on this machine only by default. With neither ``--config`` nor ``--ckpt`` it serves the
model of the last demo run (``OUTPUT/demo_shapes``), or prints the command that trains it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
from typing import Optional, Sequence

__all__ = ["build_parser", "cli", "exposure_warning", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vqdiff.app", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="model YAML (official or vqdiff), or a diffusers VQDiffusionPipeline folder "
                   "(then no --ckpt); default: the last demo run's model")
    p.add_argument("--ckpt", help="checkpoint (.pth official/vqdiff, or .safetensors)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the page has no login)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--max-images", type=int, default=8, help="most images per request (default 8)")
    p.add_argument("--max-waiting", type=int, default=4,
                   help="requests that may wait while one runs; more get a 'busy' message (default 4)")
    p.add_argument("--max-maskgit-steps", type=int, default=256, help="most MaskGIT network calls per request "
                   "(default 256); every other count of a request is bounded too (AppLimits)")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest uploaded image file in MiB, refused before it is decoded (default 10)")
    p.add_argument("--max-upload-pixels", type=int, default=4096 * 4096,
                   help="most pixels of an uploaded image, read from its header before decoding (default 4096^2)")
    p.add_argument("--show-absolute-paths", action="store_true",
                   help="show clients the absolute config/checkpoint paths (default: relative to the working "
                   "folder, or the file name only for a path outside it)")
    p.add_argument("--debug", action="store_true", help="on a start-up error, show the full traceback")
    return p


def exposure_warning(host: str) -> Optional[str]:
    """The warning for a host other machines can reach (None for a loopback address)."""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    return (f"WARNING: listening on {host}: anyone who can reach this machine's port can use the page and "
            "the model; the page has no authentication. Use --host 127.0.0.1 to keep it local.")


def main(argv: Optional[Sequence[str]] = None, block: bool = True):
    """Parse, load, serve. Returns the Gradio page (when ``block`` is False it keeps serving in the background)."""
    args = build_parser().parse_args(argv)
    from .model_source import DEMO_GUIDANCE_SCALE, resolve_model_source
    from .requests import AppLimits
    from .service import ModelService

    source = resolve_model_source(args.config, args.ckpt)
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    limits = AppLimits(max_images=args.max_images, max_waiting=args.max_waiting,
                       max_maskgit_steps=args.max_maskgit_steps, max_upload_bytes=int(args.max_upload_mb * 2**20),
                       max_upload_pixels=args.max_upload_pixels)
    if not logging.getLogger().handlers:  # unexpected request errors are logged (with an id) to stderr
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"[vqdiff.app] loading {source.describe()}", flush=True)
    service = ModelService.load(source, device=args.device, limits=limits,
                                show_absolute_paths=args.show_absolute_paths)
    from .ui import PageDefaults, build_page, launch_page

    defaults = PageDefaults(guidance_scale=DEMO_GUIDANCE_SCALE if source.is_demo else 1.0)
    page = build_page(service, defaults)
    print(f"[vqdiff.app] serving on http://{args.host}:{args.port}", flush=True)
    launch_page(page, service, args.host, args.port, block=block)
    return page


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """The command: serve until stopped; with no model and no demo run print the command that trains it (exit 2)."""
    from .model_source import NoModelError

    # SIGTERM ends the server as Ctrl-C does, so exit handlers run (the result-image folder is removed)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main(argv)
    except NoModelError as err:
        print(f"python -m vqdiff.app: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from vqdiff.utils.cli_errors import run_cli

    sys.exit(run_cli(cli, None, "python -m vqdiff.app"))
