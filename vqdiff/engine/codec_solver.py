"""The engine's ``Solver`` for a codec: the same loop, checkpoints, resume, signals, AMP and DDP, plus what a
codec run adds after each optimizer step.

- Dead-code restarts (``solver.dead_code_restart`` every N steps until ``dead_code_restart_until`` of the
  run; ``vqdiff.engine.codebook_seeding``), from the code counts the model sums over ranks.
- Validation every ``solver.validation_every`` steps on ``dataloader.validation_datasets``: L1, PSNR,
  rFID, codebook usage and perplexity (``vqdiff.evaluation.codec_metrics``), logged, in TensorBoard under
  ``val/*`` with a reconstruction grid (``val/reconstructions``: inputs above their reconstructions), and
  the grid saved as ``images/val/step<step>.png``.
- Checkpoints in both layouts at once: the engine's (``model``, optimizers, RNG, data position) and
  taming's (``state_dict`` = the ``VQModel`` keys + ``loss.*``, ``global_step``), the same tensors stored
  once, so ``TamingVQVAE`` and taming's tools read ``last.pth`` and ``--auto_resume`` continues it.

DDP runs with ``find_unused_parameters``: the generator pass leaves the discriminator unused and the
discriminator pass the generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from vqdiff.engine.codebook_seeding import restart_dead_codes
from vqdiff.engine.codec_solver_config import CodecSolverConfig
from vqdiff.engine.solver import Solver
from vqdiff.evaluation.codec_metrics import CodecMetrics

__all__ = ["CodecSolver"]


class CodecSolver(Solver):
    """``Solver(config, args, model, dataloader, logger, tb_writer, epoch_generator)`` with ``model`` a
    :class:`~vqdiff.engine.codec_model.CodecTrainingModel` and ``codec_cfg`` the codec's solver section."""

    find_unused_parameters = True

    def __init__(self, config: Mapping, args: Any, model: torch.nn.Module, dataloader: Mapping, logger: Any,
                 codec_cfg: CodecSolverConfig, tb_writer: Any = None,
                 epoch_generator: Optional[torch.Generator] = None):
        super().__init__(config, args, model, dataloader, logger, tb_writer=tb_writer, epoch_generator=epoch_generator)
        self.codec_cfg = codec_cfg
        self.history: list[tuple[int, float]] = []  # (step, reconstruction L1 of that step's batch)
        self.restarted_codes = 0
        self.validations: list[dict] = []

    def optimizer_steps_done(self) -> int:
        return (self.last_iter + 1) // self.grad_accumulation_steps

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["state_dict"] = self.raw_model.taming_state_dict()
        state["global_step"] = self.optimizer_steps_done()
        return state

    def step(self, batch: Mapping, epoch: int) -> dict:
        logs = super().step(batch, epoch)
        model = self.raw_model
        if "generator/loss" in logs:
            logs["generator/rec_l1"] = model.last_rec_l1
        if (self.last_iter + 1) % self.grad_accumulation_steps != 0 or "nonfinite" in logs:
            return logs
        cfg = self.codec_cfg
        step = self.optimizer_steps_done() - 1  # 0-based index of the optimizer step just made
        restart_until = int(cfg.dead_code_restart_until * cfg.max_steps)
        if cfg.dead_code_restart > 0 and step < restart_until and (step + 1) % cfg.dead_code_restart == 0:
            moved = restart_dead_codes(model.codec.quantize, model.code_counts, model.last_z, self.distributed)
            self.restarted_codes += moved
            if moved:
                logs["restarted_codes"] = float(moved)
        if step % cfg.log_frequency == 0 or step == cfg.max_steps - 1:
            self.history.append((step, model.last_rec_l1))
        if cfg.validation_every > 0 and (step + 1) % cfg.validation_every == 0:
            self.validate_codec(step + 1)
        return logs

    @torch.no_grad()
    def validate_codec(self, step: int) -> Optional[dict]:
        """Metrics of the current weights on the held-out loader (all ranks; a collective)."""
        loader = self.dataloader.get("validation_loader")
        if loader is None:
            return None
        model = self.raw_model
        cfg = self.codec_cfg
        was_training = model.training
        model.eval()
        metrics = CodecMetrics(model.code_counts.numel(), cfg.inception_path or None, device=str(self.device))
        limit = -(-cfg.validation_images // self.world_size) if cfg.validation_images > 0 else None
        first: Optional[tuple] = None
        seen = 0
        try:
            with torch.random.fork_rng(devices=[]):  # the loader's seed draw must not move the training RNG
                for batch in loader:
                    images = batch["image"].to(self.device).float()
                    if limit is not None:
                        images = images[: limit - seen]
                    rec, indices = model.reconstruct(images)
                    metrics.update(images, rec, indices)
                    if first is None:
                        first = (images[:8].cpu(), rec[:8].cpu())
                    seen += images.shape[0]
                    if limit is not None and seen >= limit:
                        break
        finally:
            model.train(was_training)
        result = {"step": step, **metrics.compute(distributed=self.distributed)}
        self.validations.append(result)
        rfid = "n/a" if result["rfid"] is None else f"{result['rfid']:.2f}"
        self.logger.info(f"validation step {step}: l1 {result['l1']:.4f} | psnr {result['psnr']:.2f} dB | rfid {rfid} "
                         f"| codebook usage {result['codebook_usage']:.3f} | perplexity {result['perplexity']:.1f} "
                         f"({result['num_images']} images)")
        if self.is_primary and first is not None:
            self._save_grid(step, *first)
        if self.tb_writer is not None:
            for key in ("l1", "psnr", "rfid", "codebook_usage", "perplexity"):
                if result[key] is not None:
                    self.tb_writer.add_scalar(f"val/{key}", result[key], step)
        return result

    def _save_grid(self, step: int, images: torch.Tensor, rec: torch.Tensor) -> Path:
        from torchvision.utils import make_grid, save_image

        grid = make_grid(torch.cat([images, rec]) / 255.0, nrow=images.shape[0])
        path = self.save_dir / "images" / "val" / f"step{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        if self.tb_writer is not None:
            self.tb_writer.add_image("val/reconstructions", grid, step)
        return path
