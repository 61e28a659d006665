"""Training a taming-style codec (VQ-VAE / VQGAN / Gumbel / FSQ) on the engine: :func:`train_vqvae`, the
function behind ``scripts/train_vqvae.py``.

Config layout (YAML)::

    model:      {target: VQModel | GumbelVQ | FSQModel, params: {ddconfig, n_embed, embed_dim (or levels),
                 lossconfig: {target: VQLPIPSWithDiscriminator, params: ...}, ...}}
    solver:     see vqdiff.engine.codec_solver_config.CodecSolverConfig (every key, its default and check)
    dataloader: {train_datasets: [{target, params}], validation_datasets: [...], num_workers, data_root}
                # any vqdiff.data reader whose items hold 'image' (3, H, W) in [0, 255]; streamed by a
                # DataLoader (a DistributedSampler per rank), never loaded whole

The run is the diffusion trainer's (``vqdiff.engine.solver``) with :class:`~.codec_solver.CodecSolver`:
one process or ``torchrun`` (gloo on CPU, NCCL on GPUs), gradient accumulation, ``--amp``, atomic
checkpoints, exact ``--auto_resume``, a checkpoint on SIGTERM/SIGINT, the run lock, TensorBoard, tqdm and
a log line with the ETA.

Outputs (``output_dir``): ``checkpoint/last.pth`` (the engine's entries plus taming's ``state_dict`` /
``global_step``), ``configs/config.yaml`` (the merged config), ``configs/model.yaml`` (the taming YAML:
``model`` node), ``configs/codec.yaml`` (a ``content_codec_config`` for ``TamingVQVAE`` /
``TamingGumbelVQVAE``; written when the run reaches ``max_steps``), ``logs/log.txt`` (+ TensorBoard events).
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import IterableDataset

from vqdiff import distributed as dist_utils
from vqdiff.engine.codebook_seeding import seed_codebook_from_data
from vqdiff.engine.codec_model import CodecTrainingModel
from vqdiff.engine.codec_solver import CodecSolver
from vqdiff.engine.codec_solver_config import CodecSolverConfig, engine_solver_section
from vqdiff.engine.run_lock import RunLock, refuse_overwrite
from vqdiff.modeling.codecs.image.checkpoint import (TRAINING_ONLY_PREFIXES, extract_state_dict, load_codec_weights,
                                                     read_checkpoint)
from vqdiff.modeling.codecs.image.vqgan import GumbelVQ, VQModel
from vqdiff.utils.config import ConfigError, instantiate_from_config, save_yaml_config
from vqdiff.utils.config_sections import check_config_sections

__all__ = ["train_vqvae", "load_pretrained_codec", "write_codec_configs", "INIT_IMAGES"]

INIT_IMAGES = 64  # training images whose encoder outputs seed the codebook (k-means++)


def _first_images(dataset: Any, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` training images ``(n, 3, H, W)`` in ``[-1, 1]``: random ones of a map-style data set, the first
    ones of a streamed one."""
    if isinstance(dataset, IterableDataset):
        items = []
        for item in dataset:
            items.append(item["image"])
            if len(items) >= n:
                break
    else:
        idx = torch.randperm(len(dataset), generator=generator)[:n]
        items = [dataset[int(i)]["image"] for i in idx]
    if not items:
        raise ConfigError("dataloader.train_datasets yields no images")
    return torch.stack(items).float() / 127.5 - 1.0


def load_pretrained_codec(model: CodecTrainingModel, path: str | Path, allow_unsafe: bool, logger: Any) -> None:
    """Start from a taming checkpoint (``--load_path``): the codec's weights strictly (the loss dropped), and
    the discriminator's too when the file has ``loss.discriminator.*`` of the same shapes."""
    sd = extract_state_dict(read_checkpoint(path, allow_unsafe), str(path))
    load_codec_weights(model.codec, sd, drop_prefixes=TRAINING_ONLY_PREFIXES)
    disc = getattr(model.loss, "discriminator", None)
    if disc is None:
        return
    prefix = "loss.discriminator."
    theirs = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    mine = disc.state_dict()
    if theirs.keys() == mine.keys() and all(theirs[k].shape == mine[k].shape for k in mine):
        disc.load_state_dict(theirs)
        logger.info(f"{path}: loaded the codec and its discriminator")
    else:
        logger.info(f"{path}: loaded the codec; the discriminator starts fresh (the file's does not fit)")


def write_codec_configs(config: Mapping, codec: nn.Module, output_dir: Path, image_size: tuple) -> Path:
    """``configs/model.yaml`` (taming YAML) and ``configs/codec.yaml`` (``content_codec_config``)."""
    ckpt = output_dir / "checkpoint" / "last.pth"
    model_yaml = output_dir / "configs" / "model.yaml"
    save_yaml_config({"model": config["model"]}, model_yaml)
    target = "TamingGumbelVQVAE" if isinstance(codec, GumbelVQ) else "TamingVQVAE"
    with torch.no_grad():
        grid = codec.encode_to_indices(torch.zeros(1, 3, *image_size, device=next(codec.parameters()).device)).shape[1:]
    codec_yaml = output_dir / "configs" / "codec.yaml"
    save_yaml_config({"content_codec_config": {
        "target": f"vqdiff.modeling.codecs.image.taming_vqvae.{target}",
        "params": {"trainable": False, "token_shape": [int(grid[0]), int(grid[1])],
                   "config_path": str(model_yaml), "ckpt_path": str(ckpt),
                   "num_tokens": int(codec.quantize.n_e), "quantize_number": 0, "mapping_path": None},
    }}, codec_yaml)
    return codec_yaml


@contextlib.contextmanager
def _distributed() -> Iterator[bool]:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) unless one exists; leave what we joined."""
    joined_here = not dist_utils.is_dist_initialized()
    distributed = dist_utils.init_distributed(device="cuda" if torch.cuda.is_available() else "cpu")
    try:
        yield distributed
    finally:
        if joined_here:
            dist_utils.cleanup_distributed()


def train_vqvae(
    config: Mapping[str, Any],
    output_dir: str | Path | None = None,
    max_steps: Optional[int] = None,
    seed: int = 0,
    progress: bool = True,
    *,
    auto_resume: bool = False,
    overwrite: bool = False,
    load_path: Optional[str | Path] = None,
    allow_unsafe_load: bool = False,
    tensorboard: bool = False,
    amp: Any = False,
    amp_dtype: Optional[str] = None,
) -> dict:
    """Train the configured codec on the engine (one process, or every rank of a ``torchrun`` job).

    Args:
        config: the codec config (module docstring); ``max_steps`` overrides ``solver.max_steps``.
        output_dir: the run folder (None: a temporary one, removed afterwards; the model is returned).
        seed: rank ``r`` seeds its RNGs with ``seed + r``; the data order and codebook seeding use ``seed``.
        auto_resume: continue from ``output_dir/checkpoint/last.pth`` (exactly: the RNG and data position).
        overwrite: start again although ``output_dir`` holds a run; without it (or ``auto_resume``) a
            fresh start there is refused, as ``train.py`` refuses.
        load_path: start from a taming checkpoint's weights (fine-tuning a released codec).
        allow_unsafe_load: allow checkpoints that need full unpickling (Lightning ``.ckpt``; trusted files only).
        tensorboard: write TensorBoard events into ``output_dir/logs``.
        amp / amp_dtype: mixed precision as ``train.py --amp [--amp_dtype]``.
    Returns:
        ``{'model': the codec (eval mode), 'loss_fn', 'history': [(step, rec_l1)], 'first', 'last',
        'seconds', 'restarted_codes', 'validations', 'stopped_by', 'last_iter'}``, ``rec_l1`` being the
        mean ``|x - x^|`` (images in ``[-1, 1]``) of the step's batch on this rank.
    Raises:
        SystemExit: ``128 + signal`` after SIGTERM/SIGINT stopped the run (its checkpoint saved), so that a
            caller's process ends as the signal would have ended it.
    """
    if output_dir is None:
        with tempfile.TemporaryDirectory(prefix="vqvae_") as tmp:
            return train_vqvae(config, tmp, max_steps, seed, progress, overwrite=True, amp=amp, amp_dtype=amp_dtype,
                               load_path=load_path, allow_unsafe_load=allow_unsafe_load)
    output_dir = Path(output_dir)
    with _distributed() as distributed:
        rank = dist_utils.get_rank() if distributed else 0
        lock = RunLock(output_dir) if rank == 0 else contextlib.nullcontext()
        with lock:
            if rank == 0:
                refuse_overwrite(output_dir, auto_resume=auto_resume, overwrite=overwrite)
            if distributed:
                dist_utils.barrier()  # no rank starts before the primary holds the folder
            result = _run(dict(config), output_dir, max_steps, seed, progress, distributed, rank,
                          dict(auto_resume=auto_resume, load_path=load_path, allow_unsafe_load=allow_unsafe_load,
                               tensorboard=tensorboard, amp=amp, amp_dtype=amp_dtype))
    if result.get("signal"):
        raise SystemExit(128 + int(result["signal"]))
    return result


def _run(config: dict, output_dir: Path, max_steps: Optional[int], seed: int, progress: bool, distributed: bool,
         rank: int, opts: dict) -> dict:
    from vqdiff.data.build import build_dataloader
    from vqdiff.utils.logger import get_logger
    from vqdiff.utils.seed import seed_everything

    config = copy.deepcopy(config)
    check_config_sections(config)
    if "model" not in config:
        raise ConfigError("the codec training config needs a 'model' node")
    cfg = CodecSolverConfig.from_mapping(config.get("solver"))
    if max_steps is not None:
        cfg = replace(cfg, max_steps=int(max_steps))
        config.setdefault("solver", {})["max_steps"] = cfg.max_steps
    if cfg.inception_path:  # checked now, not at the first validation hours into the run
        from vqdiff.evaluation.fid import resolve_inception_weights

        try:
            resolve_inception_weights(cfg.inception_path)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"'solver.inception_path': {err}") from err
    dl = dict(config.get("dataloader") or {})
    if cfg.validation_every > 0 and not dl.get("validation_datasets"):
        raise ConfigError("'solver.validation_every' is set but 'dataloader.validation_datasets' is empty: "
                          "give a held-out split or set solver.validation_every: 0")
    if "batch_size" in dl:
        raise ConfigError("'dataloader.batch_size': a codec run takes its batch size (per process) from "
                          "'solver.batch_size'")
    if not dl.get("train_datasets"):
        raise ConfigError("'dataloader.train_datasets' is required: a list of {target, params} data sets")
    device = torch.device(f"cuda:{dist_utils.get_local_rank() if distributed else 0}"
                          if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(seed + rank)
    logger = get_logger(f"vqdiff.codec.{output_dir.resolve()}.{rank}",
                        output_dir / "logs" / "log.txt" if rank == 0 else None, rank=rank)
    if rank == 0:
        save_yaml_config(config, output_dir / "configs" / "config.yaml")

    codec = instantiate_from_config(config["model"], key_path="model")
    if not isinstance(codec, VQModel):
        raise ConfigError(f"'model.target' must build a VQModel, GumbelVQ or FSQModel, got {type(codec).__name__}")
    lossconfig = config["model"].get("params", {}).get("lossconfig")
    loss = instantiate_from_config(lossconfig, key_path="model.params.lossconfig") if lossconfig else None
    model = CodecTrainingModel(codec, loss, cfg.max_steps, cfg.grad_accumulation_steps, tuple(cfg.gumbel_temperature))
    if opts["load_path"] is not None:
        load_pretrained_codec(model, opts["load_path"], opts["allow_unsafe_load"], logger)

    generator = torch.Generator().manual_seed(seed)
    engine_config = {"model": config["model"], "dataloader": {**dl, "batch_size": cfg.batch_size}}
    loaders = build_dataloader(engine_config, distributed=distributed, seed=seed, epoch_generator=generator)
    disc_start = int(loss.discriminator_iter_start) if getattr(loss, "discriminator", None) is not None else None
    engine_config["solver"] = engine_solver_section(cfg, disc_start, loaders["train_iterations"])
    train_set = loaders["train_loader"].dataset
    resuming = opts["auto_resume"] and (output_dir / "checkpoint" / "last.pth").is_file()
    if cfg.codebook_init == "data" and opts["load_path"] is None and not resuming:
        init_gen = torch.Generator().manual_seed(seed)
        images = _first_images(train_set, INIT_IMAGES, init_gen)
        seed_codebook_from_data(codec.encode_to_prequant, codec.quantize, [images], init_gen)

    tb = None
    if opts["tensorboard"] and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(log_dir=str(output_dir / "logs"))
    args = SimpleNamespace(save_dir=str(output_dir), log_frequency=cfg.log_frequency * cfg.grad_accumulation_steps,
                           amp=opts["amp"], amp_dtype=opts["amp_dtype"], seed=seed, distributed=distributed,
                           device=str(device), progress_bar=progress, sync_bn=False)
    solver = CodecSolver(engine_config, args, model, loaders, logger, cfg, tb_writer=tb, epoch_generator=generator)
    if opts["auto_resume"]:
        solver.resume(allow_unsafe=opts["allow_unsafe_load"])
    t0 = time.time()
    try:
        outcome = solver.train()
    finally:
        if tb is not None:
            tb.close()
    seconds = time.time() - t0
    finished = outcome["stopped_by"] in ("max_iterations", "max_epochs")
    logger.info(f"codec training stopped ({outcome['stopped_by']}) at step {solver.optimizer_steps_done()} "
                f"in {seconds:.0f} s; {solver.restarted_codes} dead codes restarted")
    if finished and rank == 0:
        sample = train_set[0]["image"] if not isinstance(train_set, IterableDataset) else next(iter(train_set))["image"]
        codec_yaml = write_codec_configs(config, codec.eval(), output_dir, tuple(sample.shape[-2:]))
        logger.info(f"checkpoint: {output_dir / 'checkpoint' / 'last.pth'}\ncodec config: {codec_yaml}")
    codec.eval()
    history = solver.history
    result = {"model": codec, "loss_fn": loss, "history": history, "first": history[0][1] if history else None,
              "last": history[-1][1] if history else None, "seconds": seconds,
              "restarted_codes": solver.restarted_codes, "validations": solver.validations,
              "stopped_by": outcome["stopped_by"], "last_iter": solver.last_iter}
    if solver._stop_signal is not None:
        result["signal"] = solver._stop_signal
    return result
