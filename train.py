#!/usr/bin/env python
"""Training entry point with the official flags (VQ-Diffusion ``train.py``).

    python train.py --name coco --config_file configs/coco.yaml --tensorboard
    torchrun --nproc_per_node=8 train.py --config_file configs/coco.yaml --amp
    python train.py --config_file configs/coco.yaml dataloader.batch_size=2 solver.base_lr 1e-4

Under ``torchrun`` rank and world size come from the environment (gloo on CPU, NCCL on CUDA); without
it one process runs, or, when several local GPUs are visible (and ``--gpu`` is not given), one process
per GPU is spawned (``--num_node``/``--node_rank``/``--dist_url`` for several machines).
Outputs go to ``OUTPUT/<name>/{configs,logs,checkpoint,images}`` (TensorBoard event files in ``logs``, as official).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

REPO = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="VQ-Diffusion training")
    p.add_argument("--name", type=str, default="", help="run name (default: the config file's basename)")
    p.add_argument("--config_file", type=str, default=None,
                   help="the training config (required unless --resume_name names a run to continue)")
    p.add_argument("--output", type=str, default="OUTPUT", help="folder holding OUTPUT/<name>")
    p.add_argument("--log_frequency", type=int, default=100, help="iterations between log lines")
    p.add_argument("--load_path", type=str, default=None, help="initialise the model from this checkpoint")
    p.add_argument("--resume_name", type=str, default=None, help="resume the run of this name (its saved config)")
    p.add_argument("--auto_resume", action="store_true", help="continue from OUTPUT/<name>/checkpoint/last.pth")
    p.add_argument("--allow_unsafe_load", action="store_true",
                   help="allow checkpoints that need full (unsafe) unpickling; only for files you trust")
    p.add_argument("--num_node", type=int, default=1)
    p.add_argument("--node_rank", type=int, default=int(os.environ.get("AZ_BATCHAI_TASK_INDEX", 0)))
    p.add_argument("--dist_url", type=str, default=(
        f"tcp://{os.environ['AZ_BATCH_MASTER_NODE']}" if "AZ_BATCH_MASTER_NODE" in os.environ else "tcp://127.0.0.1:29500"))
    p.add_argument("--gpu", type=int, default=None, help="use this single GPU (no DDP)")
    p.add_argument("--sync_bn", action="store_true")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--timestamp", action="store_true", help="prefix the run name with the start time")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cudnn_deterministic", action="store_true")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: fp16 autocast + GradScaler on CUDA as official (bf16: --amp_dtype bf16)")
    p.add_argument("--amp_dtype", choices=["fp16", "bf16", "auto"], default=None,
                   help="autocast dtype under --amp (default: solver.amp_dtype, which defaults to fp16); bf16 also "
                        "on the CPU; auto: bf16 where the GPU/CPU runs it natively, else fp16 (CUDA) or fp32 (CPU)")
    p.add_argument("--debug", action="store_true",
                   help="name 'debug', batch size 1, no workers; errors show their full traceback")
    p.add_argument("--overwrite", action="store_true",
                   help="start OUTPUT/<name> again from scratch even though it holds a run (its last.pth)")
    p.add_argument("--no_progress_bar", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: a.b=1 or a.b 1")
    args = p.parse_args(argv)
    if args.seed is not None and abs(args.seed) >= 2**62:  # torch takes 64-bit seeds; epochs and ranks are added
        p.error(f"--seed must be between -2**62 and 2**62, got {args.seed}")
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    if args.resume_name is None and args.config_file is None:
        p.error("--config_file is required (or --resume_name NAME to continue the run OUTPUT/NAME)")
    if args.resume_name is not None:
        args.name = args.resume_name
        args.config_file = os.path.join(args.output, args.resume_name, "configs", "config.yaml")
        args.auto_resume = True
    else:
        if args.name == "":
            args.name = os.path.splitext(os.path.basename(args.config_file))[0]
        if args.debug:
            args.name = "debug"
    if args.timestamp:
        args.name = time.strftime("%Y-%m-%dT%H-%M-%S") + "-" + args.name
    args.save_dir = os.path.join(args.output, args.name)
    return args


def main_worker(args: argparse.Namespace) -> dict:
    from vqdiff import distributed as dist_utils
    from vqdiff.data.build import build_dataloader
    from vqdiff.data.image_class_folder import save_class_names
    from vqdiff.engine.solver import Solver
    from vqdiff.utils.config import instantiate_from_config, load_yaml_config, merge_opts_to_config, save_yaml_config
    from vqdiff.utils.config_sections import check_config_sections
    from vqdiff.utils.logger import get_logger
    from vqdiff.utils.seed import seed_everything

    use_cuda = torch.cuda.is_available()
    args.distributed = dist_utils.init_distributed(device="cuda" if use_cuda else "cpu")
    rank = dist_utils.get_rank() if args.distributed else 0
    args.global_rank, args.world_size = rank, (dist_utils.get_world_size() if args.distributed else 1)
    args.local_rank = dist_utils.get_local_rank() if args.distributed else 0
    if use_cuda:
        index = args.gpu if args.gpu is not None else args.local_rank
        torch.cuda.set_device(index)
        args.device = f"cuda:{index}"
    else:
        args.device = "cpu"
    args.progress_bar = not args.no_progress_bar

    if args.seed is not None:
        seed_everything(args.seed + rank, deterministic=args.cudnn_deterministic)
    config = load_yaml_config(args.config_file)
    merge_opts_to_config(config, args.opts)
    check_config_sections(config)
    if args.debug:
        config["dataloader"]["batch_size"] = 1
        config["dataloader"]["num_workers"] = 0

    save_dir = Path(args.save_dir)
    logger = get_logger(f"vqdiff.train.{args.name}.{rank}", save_dir / "logs" / "log.txt" if rank == 0 else None, rank=rank)
    if rank == 0:
        (save_dir / "configs").mkdir(parents=True, exist_ok=True)
        save_yaml_config(config, save_dir / "configs" / "config.yaml")
        (save_dir / "configs" / "args.txt").write_text(
            "\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())) + "\n", encoding="utf-8")
        logger.info(f"run {args.name}: config {args.config_file}, outputs {save_dir}")
    data_log = _share_log_file(logger, "vqdiff.data")  # bad-image warnings into log.txt too
    tb = None
    if args.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(log_dir=str(save_dir / "logs"))  # official: event files beside log.txt

    model = instantiate_from_config(config["model"], key_path="model")
    generator = torch.Generator().manual_seed(args.seed or 0)
    loaders = build_dataloader(config, args, distributed=args.distributed, seed=args.seed or 0,
                               epoch_generator=generator)
    if rank == 0:  # class folders: the label -> class name table goes with the run
        save_class_names(loaders["train_loader"].dataset, save_dir / "configs")
    solver = Solver(config=config, args=args, model=model, dataloader=loaders, logger=logger, tb_writer=tb,
                    epoch_generator=generator)
    if args.load_path is not None and solver.lora is None:  # a LoRA run loaded it before injecting adapters
        solver.resume(path=args.load_path, load_optimizer_and_scheduler=False, load_others=False,
                      allow_unsafe=args.allow_unsafe_load)
    if args.auto_resume:
        solver.resume(allow_unsafe=args.allow_unsafe_load)
    try:
        result = solver.train()
    finally:
        if tb is not None:
            tb.close()
        data_log()
    logger.info(f"training finished ({result['stopped_by']}) at epoch {solver.last_epoch}, iteration {solver.last_iter}")
    result["last_iter"] = solver.last_iter
    result["save_dir"] = str(save_dir)
    if solver._stop_signal is not None:
        result["signal"] = solver._stop_signal
    return result


def _share_log_file(logger: Any, name: str) -> Any:
    """Send the records of logger ``name`` to ``logger``'s outputs (console, log.txt); returns the undo."""
    import logging

    target = logging.getLogger(name)
    handlers = [h for h in logger.handlers if h not in target.handlers]
    for h in handlers:
        target.addHandler(h)
    return lambda: [target.removeHandler(h) for h in handlers]


@contextlib.contextmanager
def _output_lock(args: argparse.Namespace, rank: int) -> Iterator[None]:
    """The primary process locks OUTPUT/<name> (a second run on it refuses, naming the holder), then
    refuses to start a finished run again without --auto_resume or --overwrite; other ranks take no lock."""
    from vqdiff.engine.run_lock import RunLock, refuse_overwrite

    if rank != 0:
        yield
        return
    with RunLock(args.save_dir, log=lambda msg: print(msg, file=sys.stderr)):
        refuse_overwrite(args.save_dir, auto_resume=args.auto_resume, overwrite=args.overwrite)
        yield


def _spawned(local_rank: int, args: argparse.Namespace, ngpus: int) -> None:
    os.environ.update({"RANK": str(args.node_rank * ngpus + local_rank), "LOCAL_RANK": str(local_rank),
                       "WORLD_SIZE": str(args.num_node * ngpus)})
    url = args.dist_url.replace("tcp://", "")
    host, _, port = url.rpartition(":")
    os.environ.setdefault("MASTER_ADDR", host or "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", port or "29500")
    with _output_lock(args, int(os.environ["RANK"])):
        main_worker(args)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``) and train; returns ``{'stopped_by', 'losses', ...}``."""
    args = get_args(argv)
    from vqdiff import distributed as dist_utils

    ngpus = torch.cuda.device_count()
    if (not dist_utils.launched_by_torchrun() and args.gpu is None and ngpus * args.num_node > 1):
        import torch.multiprocessing as mp

        mp.spawn(_spawned, args=(args, ngpus), nprocs=ngpus)
        return {"stopped_by": "spawned"}
    try:
        with _output_lock(args, int(os.environ.get("RANK", "0"))):
            return main_worker(args)
    finally:
        dist_utils.cleanup_distributed()


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    from vqdiff.utils.cli_errors import run_cli

    out = run_cli(main, None, "train.py")
    if out.get("signal"):
        sys.exit(128 + int(out["signal"]))
