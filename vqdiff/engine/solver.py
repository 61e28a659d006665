"""The trainer (official ``image_synthesis.engine.solver.Solver``): epochs of optimizer steps on a model
whose ``forward(batch, return_loss=True, step=it)`` returns ``{'loss': scalar, ...}``.

The official training recipe by default (docs/training.md lists each rule and its opt-in alternative):
gradient clipping by the official rule (``clip_grad_norm.ClipGradNorm``), validation of the raw weights
with the EMA weights' loss logged beside it, ``--amp`` = fp16 autocast with a GradScaler (bf16 an option),
the official ``solver:`` forms (``solver_config``), official TensorBoard and sample-grid names (``train_log``).

Features: DDP (the launcher wraps nothing; the solver does), optimizers/schedulers from config, warm-up,
gradient clipping and accumulation, mixed precision on CUDA, EMA (sampling uses it), validation every
``validation_epochs`` (loss averaged over all ranks), sample grids every ``sample_iterations``, TensorBoard
scalars, a tqdm bar on the primary rank, atomic checkpoints with every rank's RNG state and the data position
so that ``--auto_resume`` continues exactly (bit for bit on CPU with ``num_workers: 0``), skipping of
non-finite steps, and a checkpoint on SIGTERM/SIGINT. ``codec_solver.CodecSolver`` trains image codecs on it.

The loop reads top to bottom: ``train`` -> ``train_epoch`` -> ``step``. Around it, one module per concept:
``solver_config`` (the typed ``solver:`` section), ``optim`` + ``lr_scheduler`` (optimizers and schedules),
``ema``, ``clip_grad_norm``, ``amp``, ``lora_training`` (``solver.lora``), ``resumable_loader`` (resuming
inside an epoch), ``rng_state``, ``solver_checkpoint`` (checkpoint layout, saving, resuming), ``validation``,
``train_log``."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from vqdiff import distributed as dist_utils
from vqdiff.data.token_cache import set_dataset_epoch
from vqdiff.engine.amp import resolve_amp
from vqdiff.engine.clip_grad_norm import ClipGradNorm
from vqdiff.engine.ema import EMA, build_ema
from vqdiff.engine.lora_training import LoraRun
from vqdiff.engine.optim import build_optimizers_and_schedulers
from vqdiff.engine.resumable_loader import loader_skipping
from vqdiff.engine.solver_checkpoint import SolverCheckpoints
from vqdiff.engine.solver_config import SolverConfig, epoch_rule_due, parse_solver_config
from vqdiff.engine.train_log import ProgressLine, average_losses_over_ranks, save_sample_grids
from vqdiff.engine.validation import ema_weights_on_every_rank, summed_loss
from vqdiff.modeling.models._common import to_device
from vqdiff.utils.config import instantiate_from_config

__all__ = ["Solver", "TrainingStopped"]


class TrainingStopped(RuntimeError):
    """Raised when training cannot go on (too many non-finite steps in a row)."""


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Mapping):
        for v in batch.values():
            if torch.is_tensor(v) and v.dim() > 0:
                return int(v.shape[0])
            if isinstance(v, (list, tuple)):
                return len(v)
    return 1


def _batch_to(batch: Any, device: torch.device) -> Any:
    """A batch dict with its tensors on ``device`` (other values as they are)."""
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return to_device(batch, device)


# ------------------------------------------------------------------------------------------ solver
class Solver(SolverCheckpoints):
    """Train ``model`` with ``config['solver']`` on ``dataloader`` (``build_dataloader``'s dict).

    Args:
        config: the whole merged config.
        args: namespace with ``name``, ``save_dir`` (OUTPUT/<name>), ``log_frequency``, ``amp``,
            ``seed``, ``distributed``, ``local_rank``, ``global_rank``, ``world_size``, ``device``.
        model: the (un-wrapped) model; moved to ``args.device`` and wrapped in DDP when distributed.
        dataloader: ``{'train_loader', 'validation_loader', 'train_iterations', ...}``.
        logger: a ``logging.Logger``; ``tb_writer``: an optional ``SummaryWriter`` (primary only).
        epoch_generator: the train loader's generator; re-seeded with ``seed + epoch`` each epoch.
    """
    find_unused_parameters = False  # DDP's flag: a model whose passes leave parameters unused sets True

    def __init__(self, config: Mapping, args: Any, model: nn.Module, dataloader: Mapping, logger: Any,
                 tb_writer: Any = None, epoch_generator: Optional[torch.Generator] = None):
        self.config = config
        self.args = args
        self.logger = logger
        self.tb_writer = tb_writer
        self.dataloader = dataloader
        self.epoch_generator = epoch_generator
        # the solver section, checked key by key once (errors name solver.<key>)
        self.cfg: SolverConfig = parse_solver_config(config.get("solver"))
        cfg = self.cfg
        self.max_epochs = cfg.max_epochs
        self.save_epochs = cfg.save_epochs
        self.save_iterations = cfg.save_iterations
        self.validation_epochs = cfg.validation_epochs
        self.train_iterations = int(dataloader["train_iterations"])
        self.sample_iterations = cfg.sample_every(self.train_iterations)
        self.max_iterations = cfg.max_iterations
        self.grad_accumulation_steps = cfg.grad_accumulation_steps
        self.max_nonfinite_steps = cfg.max_nonfinite_steps

        self.save_dir = Path(args.save_dir)
        self.ckpt_dir = self.save_dir / "checkpoint"
        self.image_dir = self.save_dir / "images"
        self.device = torch.device(getattr(args, "device", "cpu"))
        self.distributed = bool(getattr(args, "distributed", False))
        self.world_size = dist_utils.get_world_size() if self.distributed else 1
        self.rank = dist_utils.get_rank() if self.distributed else 0
        self.is_primary = self.rank == 0
        self.seed = int(getattr(args, "seed", None) or 0)

        self.last_epoch = -1
        self.last_iter = -1
        self.batches_done = 0  # in the current epoch
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.overflow_steps = 0  # fp16 GradScaler overflows (skipped steps that lower the loss scale)
        self._stop_signal: Optional[int] = None
        self._progress: Optional[ProgressLine] = None  # set by train() (or the first log line without it)

        # solver.lora: the base checkpoint loads, then peft's adapters are injected (before EMA, optimizer, DDP)
        self.lora: Optional[LoraRun] = cfg.lora and LoraRun.prepare(cfg.lora, model, args, self.ckpt_dir, logger)
        # EMA of the trained network, primary rank only, built before the device move (official)
        self.has_ema = cfg.ema is not None  # on every rank; self.ema exists on the primary only
        self.ema: Optional[EMA] = None
        if cfg.ema is not None and self.is_primary:
            self.ema = self.lora.build_ema(cfg.ema) if self.lora is not None \
                else build_ema(cfg.ema, model.get_ema_model())

        cg = cfg.clip_grad_norm
        self.clip_grad_norm: Optional[ClipGradNorm] = instantiate_from_config(cg, key_path="solver.clip_grad_norm") \
            if cg is not None else None
        if isinstance(self.clip_grad_norm, ClipGradNorm) and self.clip_grad_norm.ineffective_end_iteration():
            self.logger.warning(
                f"solver.clip_grad_norm.params.end_iteration={self.clip_grad_norm.end_iteration} has no effect: "
                f"under the official rule (the default) gradients are clipped on every step from iteration 0; "
                f"set solver.clip_grad_norm.params.rule: window to stop clipping at end_iteration")

        # lr
        adjust = cfg.adjust_lr
        bs = int(config.get("dataloader", {}).get("batch_size", 1))
        scale = {"none": 1.0, "sqrt": math.sqrt(self.world_size * bs), "linear": float(self.world_size * bs)}
        self.lr = cfg.base_lr * scale[adjust]

        model = model.to(self.device)
        self.raw_model = model
        self.optimizer_and_scheduler = build_optimizers_and_schedulers(
            cfg.optimizers_and_schedulers, model, self.lr, run_iterations=cfg.total_iterations(self.train_iterations),
            train_iterations=self.train_iterations)
        if self.distributed:
            if getattr(args, "sync_bn", False):
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                        find_unused_parameters=self.find_unused_parameters)
        self.model = model

        # official --amp: fp16 autocast + GradScaler; --amp_dtype bf16 (or solver.amp_dtype: bf16) an option
        self.amp = resolve_amp(getattr(args, "amp", False), getattr(args, "amp_dtype", None) or cfg.amp_dtype,
                               self.device)
        if self.amp.note:
            self.logger.info(self.amp.note)
        self.use_amp = self.amp.enabled
        self.amp_dtype = self.amp.dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp.use_scaler)
        self.logger.info(f"lr {self.lr:.3g} (base {cfg.base_lr:.3g}, adjust {adjust}), precision {self.amp.name}, "
                         f"{self.train_iterations} iterations/epoch, world size {self.world_size}, "
                         f"device {self.device}")

    def _lrs(self) -> dict:
        return {n: float(o["optimizer"]["module"].param_groups[0]["lr"]) for n, o in self.optimizer_and_scheduler.items()}

    # ---------------------------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> dict:
        previous = {}
        owner = os.getpid()

        def handler(signum, frame):  # noqa: ARG001
            if os.getpid() != owner:  # a forked DataLoader worker inherited this handler: the trainer decides
                return
            if self._stop_signal is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum
            self.logger.info(f"received signal {signal.Signals(signum).name}: saving a checkpoint after this step")

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return previous

    # ---------------------------------------------------------------------------------- one step
    def _active(self, op_sc: Mapping, epoch: int, it: int) -> bool:
        if epoch < op_sc["start_epoch"] or (op_sc["end_epoch"] > 0 and epoch >= op_sc["end_epoch"]):
            return False
        return it >= op_sc["start_iteration"] and (op_sc["end_iteration"] <= 0 or it < op_sc["end_iteration"])

    def step(self, batch: Mapping, epoch: int) -> dict:
        """Forward, backward and (unless the loss/gradients are not finite) an optimizer step per optimizer."""
        batch = _batch_to(batch, self.device)
        it = self.last_iter
        accum = self.grad_accumulation_steps
        boundary = (it + 1) % accum == 0
        logs: dict = {}
        for name, op_sc in self.optimizer_and_scheduler.items():
            if not self._active(op_sc, epoch, it):
                continue
            opt = op_sc["optimizer"]["module"]
            if accum == 1 and (it + 1) % op_sc["optimizer"]["step_iteration"] != 0:
                continue
            sync_ctx = self.model.no_sync() if (self.distributed and not boundary) else contextlib.nullcontext()
            with sync_ctx:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                    kwargs = {"name": name} if name != "none" else {}
                    output = self.model(batch, return_loss=True, step=it, **kwargs)
                loss = output["loss"]
                bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0, 0.0], device=self.device)
                bad[1] = 1.0 if self._stop_signal is not None else 0.0
                if self.distributed:
                    dist_utils.all_reduce(bad, "max")
                if bad[1] > 0 and self._stop_signal is None:
                    self._stop_signal = int(signal.SIGTERM)
                if bad[0] > 0:
                    opt.zero_grad(set_to_none=True)
                    return self._nonfinite(name, "loss", logs)
                self.scaler.scale(loss / accum).backward()
            logs[f"{name}/loss"] = float(loss.detach())
            if not boundary:
                continue
            self.scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if self.clip_grad_norm is not None:
                norm = self.clip_grad_norm(params)
                if norm is None:
                    norm = _total_norm(params)
            else:
                norm = _total_norm(params)
            if not torch.isfinite(norm):
                opt.zero_grad(set_to_none=True)
                scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 0.0
                self.scaler.update()
                if scale > 1.0:
                    # fp16 loss-scale overflow: GradScaler skips the step and halves the scale, the normal
                    # way it finds its scale; not a divergence unless the scale has nowhere left to go
                    self.overflow_steps += 1
                    logs["overflow"] = scale
                    self.logger.info(f"iteration {self.last_iter}: fp16 gradient overflow at loss scale {scale:g}, "
                                     f"step skipped, scale now {float(self.scaler.get_scale()):g}")
                    return logs
                return self._nonfinite(name, "gradient", logs)
            self.scaler.step(opt)
            self.scaler.update()
            opt.zero_grad(set_to_none=True)
            logs[f"{name}/grad_norm"] = float(norm)
            self.nonfinite_in_row = 0
            sched = op_sc.get("scheduler")
            if sched is not None and (it + 1) % sched["step_iteration"] == 0:
                sched["module"].step(logs[f"{name}/loss"])  # an LRSchedule: plateau schedules use the loss
        if self.ema is not None:
            self.ema.update(it)
        return logs

    def _nonfinite(self, name: str, what: str, logs: dict) -> dict:
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        self.logger.warning(f"iteration {self.last_iter}: non-finite {what} for optimizer '{name}', step skipped "
                            f"({self.nonfinite_in_row} in a row, {self.nonfinite_total} in total)")
        logs["nonfinite"] = what
        return logs

    # ---------------------------------------------------------------------------------- loops
    def train(self) -> dict:
        """Run until ``max_epochs`` (or ``max_iterations``, a signal, or too many non-finite steps)."""
        previous = self._install_signal_handlers()
        self._progress = ProgressLine(self.cfg.total_iterations(self.train_iterations), self.max_epochs,
                                      start_iter=self.last_iter)
        try:
            return self._train()
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
            if self.tb_writer is not None:
                self.tb_writer.flush()

    def _train(self) -> dict:
        start_epoch = self.last_epoch + 1
        result = {"stopped_by": None, "losses": []}
        if self.max_iterations is not None and self.last_iter + 1 >= self.max_iterations:
            result["stopped_by"] = "max_iterations"
            return result
        for epoch in range(start_epoch, self.max_epochs):
            stop = self.train_epoch(epoch, result["losses"])
            if stop is not None and self.batches_done >= self.train_iterations:  # stopped at an epoch end
                self.last_epoch = epoch
                self.batches_done = 0
            if stop is not None:
                self.save(force=True)
                result["stopped_by"] = stop
                if stop == "nonfinite":
                    raise TrainingStopped(
                        f"{self.nonfinite_in_row} non-finite steps in a row (solver.max_nonfinite_steps="
                        f"{self.max_nonfinite_steps}); stopped at iteration {self.last_iter}; checkpoint "
                        f"{self.ckpt_dir / 'last.pth'}. Lower the learning rate or check the data.")
                return result
            self.last_epoch = epoch
            self.batches_done = 0
            # validation draws from the global RNG and updates the model's loss history: the epoch-end
            # checkpoint is written after it, so that a resume from it continues the same run exactly
            self.validate_epoch(epoch)
            self.save(force=True)
            if self._stop_signal is not None:  # a signal during validation: the state is saved, stop
                result["stopped_by"] = f"signal {signal.Signals(self._stop_signal).name}"
                return result
        result["stopped_by"] = "max_epochs"
        return result

    def _set_epoch(self, epoch: int) -> DataLoader:
        loader = self.dataloader["train_loader"]
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        set_dataset_epoch(loader.dataset, epoch)  # token caches draw their crops/captions per epoch
        if self.epoch_generator is not None:
            self.epoch_generator.manual_seed(self.seed + epoch)
        return loader_skipping(loader, self.batches_done)

    def train_epoch(self, epoch: int, losses: list) -> Optional[str]:
        loader = self._set_epoch(epoch)
        bar = None
        if self.is_primary and getattr(self.args, "progress_bar", True):
            try:
                from tqdm import tqdm

                bar = tqdm(total=self.train_iterations, initial=self.batches_done, desc=f"epoch {epoch}",
                           dynamic_ncols=True, leave=False)
            except ImportError:
                bar = None
        log_freq = max(1, int(getattr(self.args, "log_frequency", 100)))
        t_last, images = time.time(), 0
        stop: Optional[str] = None
        try:
            for batch in loader:
                self.last_iter += 1
                logs = self.step(batch, epoch)
                self.batches_done += 1
                images += _batch_size(batch) * self.world_size
                losses.append(next((v for k, v in logs.items() if k.endswith("/loss")), float("nan")))
                if bar is not None:
                    bar.update(1)
                if (self.last_iter + 1) % log_freq == 0:
                    dt = max(time.time() - t_last, 1e-9)
                    self._log(epoch, logs, images / dt)
                    t_last, images = time.time(), 0
                if self.sample_iterations > 0 and (self.last_iter + 1) % self.sample_iterations == 0:
                    self.sample(batch)
                if self.max_nonfinite_steps > 0 and self.nonfinite_in_row >= self.max_nonfinite_steps:
                    stop = "nonfinite"
                    break
                if self._stop_signal is not None:
                    stop = f"signal {signal.Signals(self._stop_signal).name}"
                    break
                if self.max_iterations is not None and self.last_iter + 1 >= self.max_iterations:
                    stop = "max_iterations"
                    break
        finally:
            if bar is not None:
                bar.close()
        return stop

    def _log(self, epoch: int, logs: Mapping, images_per_s: float) -> None:
        """The progress line (losses averaged over ranks, s/iter, ETA) and the official TensorBoard scalars."""
        logs = average_losses_over_ranks(logs, self.distributed)
        lrs = self._lrs()
        if self._progress is None:
            self._progress = ProgressLine(self.cfg.total_iterations(self.train_iterations), self.max_epochs,
                                          start_iter=self.last_iter - 1)
        self.logger.info(self._progress.format(epoch, self.last_iter, logs, lrs, images_per_s))
        if self.tb_writer is not None:
            for k, v in logs.items():
                if isinstance(v, float):
                    self.tb_writer.add_scalar(f"train/{k}", v, self.last_iter)
            for n, v in lrs.items():
                self.tb_writer.add_scalar(f"train/{n}_lr", v, self.last_iter)
            self.tb_writer.add_scalar("train/images_per_s", images_per_s, self.last_iter)

    @torch.no_grad()
    def validate_epoch(self, epoch: int) -> Optional[float]:
        """Validation loss of the raw weights (official), returned and logged as ``val/<opt>/loss``; with an
        EMA the EMA weights' loss is logged beside it (``val/<opt>/loss_ema``); ``<opt>`` is the first
        optimizer's name (``none``). Runs when ``validation_epochs`` says so for ``epoch + 1`` finished epochs."""
        loader = self.dataloader.get("validation_loader")
        if loader is None or not epoch_rule_due(self.validation_epochs, epoch + 1):
            return None

        def run() -> tuple[float, int]:
            total = summed_loss(self.raw_model, loader, lambda b: _batch_to(b, self.device), _batch_size,
                                self._autocast, self.last_iter, self.device)
            if self.distributed:
                dist_utils.all_reduce(total, "sum")
            return float(total[0] / total[1].clamp_min(1)), int(total[1])

        mean, items = run()
        text = f"validation epoch {epoch}: loss {mean:.4f} ({items} items)"
        losses = {"loss": mean}
        if self.has_ema:
            with ema_weights_on_every_rank(self.raw_model.get_ema_model(), self.ema, self.distributed,
                                           self.has_ema):
                losses["loss_ema"], _ = run()
            text += f" | EMA weights: loss {losses['loss_ema']:.4f}"
        self.logger.info(text)
        if self.tb_writer is not None:
            name = next(iter(self.optimizer_and_scheduler))
            for k, v in losses.items():
                self.tb_writer.add_scalar(f"val/{name}/{k}", v, epoch)
        return mean

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    @torch.no_grad()
    def sample(self, batch: Mapping, max_items: int = 4) -> list:
        """Sample grids with the EMA weights (primary rank, models that have ``sample``)."""
        model = self.raw_model
        if not self.is_primary or not hasattr(model, "sample"):
            return []
        small = {k: (v[:max_items] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in batch.items()}
        small = _batch_to(small, self.device)
        ctx = self.ema.swapped() if self.ema is not None else contextlib.nullcontext()
        with ctx, self._autocast():  # official: sampling under --amp runs in autocast too
            out = model.sample(small)
        epoch, it_in_epoch = self.last_epoch + 1, self.last_iter % self.train_iterations  # official names
        paths = save_sample_grids(out, self.image_dir, epoch, it_in_epoch, self.rank, ema=self.ema is not None,
                                  tb_writer=self.tb_writer, global_step=self.last_iter)
        self.logger.info(f"saved {len(paths)} sample grids to {self.image_dir}")
        return paths


def _total_norm(params: list) -> torch.Tensor:
    if not params:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params]))
