"""The solver's checkpoints: what one holds, when one is written, and how a run resumes from one.

Layout (official keys first): ``model``, ``ema`` (with an EMA), ``last_epoch`` (last finished epoch),
``last_iter`` (last finished iteration), ``clip_grad_norm`` (with clipping), ``optimizer_and_scheduler``
(a scheduler's ``step_iteration`` stored as iterations, ``epoch`` resolved, as official); added:
``scaler``, ``rng`` (one :func:`~vqdiff.engine.rng_state.get_rng_state` per rank), ``data_state``
``{epoch, batches_done, seed, world_size}``, ``nonfinite_steps``; a LoRA run (``solver.lora``) stores its
trained tensors only under ``model``/``ema`` and the base file under ``lora`` (``lora_training``), and writes
the adapter folder beside each file (``last.pth`` -> ``last_lora/``). Files: ``last.pth`` after every epoch
(and on a stop), ``{epoch:06d}e_{iter}iter.pth`` when ``save_epochs``/``save_iterations`` say so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

from vqdiff import distributed as dist_utils
from vqdiff.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vqdiff.engine.rng_state import get_rng_state, set_rng_state
from vqdiff.engine.solver_config import epoch_rule_due
from vqdiff.engine.state_match import require_same_shapes

__all__ = ["SolverCheckpoints"]


class SolverCheckpoints:
    """Checkpoint methods of :class:`~vqdiff.engine.solver.Solver` (which holds the attributes read here:
    ``raw_model``, ``ema``, ``clip_grad_norm``, ``optimizer_and_scheduler``, ``scaler``, the counters
    ``last_epoch``/``last_iter``/``batches_done``/``nonfinite_*``, ``ckpt_dir``, the rank and the logger)."""

    logger: Any

    def state_dict(self) -> dict:
        """The checkpoint dict (collective: gathers every rank's RNG state)."""
        rng = dist_utils.all_gather_object(get_rng_state()) if self.distributed else [get_rng_state()]
        ops = {}
        for name, op_sc in self.optimizer_and_scheduler.items():
            entry = {k: op_sc[k] for k in ("name", "start_epoch", "end_epoch", "start_iteration", "end_iteration")}
            entry["optimizer"] = {"step_iteration": op_sc["optimizer"]["step_iteration"],
                                  "module": op_sc["optimizer"]["module"].state_dict()}
            if "scheduler" in op_sc:
                entry["scheduler"] = {"step_iteration": op_sc["scheduler"]["step_iteration"],
                                      "module": op_sc["scheduler"]["module"].state_dict()}
            ops[name] = entry
        model_state = self.lora.trained_state() if self.lora is not None else self.raw_model.state_dict()
        state = {"last_epoch": self.last_epoch, "last_iter": self.last_iter, "model": model_state}
        # official layout: 'ema' and 'clip_grad_norm' only when they exist (the official loader calls
        # load_state_dict on any value stored under these keys, so None would break it)
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.clip_grad_norm is not None:
            state["clip_grad_norm"] = self.clip_grad_norm.state_dict()
        if self.lora is not None:
            state["lora"] = self.lora.record()
        return {
            **state,
            "optimizer_and_scheduler": ops,
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "data_state": {"epoch": self.last_epoch + 1, "batches_done": self.batches_done, "seed": self.seed,
                           "world_size": self.world_size},
            "nonfinite_steps": {"in_row": self.nonfinite_in_row, "total": self.nonfinite_total},
        }

    def save(self, force: bool = False) -> list:
        """``last.pth`` (when ``force``) and the periodic ``{epoch:06d}e_{iter}iter.pth`` (all ranks call it)."""
        state = self.state_dict()
        written = []
        if not self.is_primary:
            return written
        periodic = False
        if self.batches_done == 0:  # epoch end
            if epoch_rule_due(self.save_epochs, self.last_epoch + 1):
                periodic = True
            if self.save_iterations > 0 and (self.last_iter + 1) % self.save_iterations == 0:
                periodic = True
        if periodic:
            written.append(save_checkpoint(state, self.ckpt_dir / f"{self.last_epoch:06d}e_{self.last_iter}iter.pth"))
        if force:
            written.append(save_checkpoint(state, self.ckpt_dir / "last.pth"))
        for p in written:
            self.logger.info(f"saved checkpoint {p}")
            if self.lora is not None:
                folder = self.lora.save_adapter(p, self.ema, self.last_epoch, self.last_iter)
                self.logger.info(f"saved LoRA adapter {folder}")
        return written

    def _check_loaded(self, path: str | os.PathLike, what: str, missing: list, unexpected: list,
                      resuming: bool) -> None:
        """A resumed run must match its checkpoint exactly. A pretrained checkpoint (``--load_path``) may lack
        tensors the config adds (the tune recipe's learnable null text, ``empty_text_embed``): they keep
        their initial value, and the log names them (the official single-GPU resume loads strictly and
        stops there; OFFICIAL.md, "Fix")."""
        if unexpected or (missing and resuming):
            raise CheckpointError(f"checkpoint {path} does not match the {what}: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        if missing:
            self.logger.warning(f"checkpoint {path} has no {len(missing)} tensor(s) of the {what}, kept as "
                                f"initialised: {', '.join(missing[:5])}"
                                + (" ..." if len(missing) > 5 else ""))

    def resume(self, path: Optional[str | os.PathLike] = None, load_optimizer_and_scheduler: bool = True,
               load_others: bool = True, allow_unsafe: bool = False) -> bool:
        """Load ``path`` (default ``last.pth``); returns False when the default file does not exist."""
        if path is None:
            path = self.ckpt_dir / "last.pth"
            if not Path(path).is_file():
                self.logger.info(f"no checkpoint at {path}: starting from scratch")
                return False
        ckpt = load_checkpoint(path, map_location="cpu", allow_unsafe=allow_unsafe)
        if not isinstance(ckpt, Mapping) or "model" not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no 'model' entry (keys: {list(ckpt)[:8]})")
        if self.lora is not None:  # a LoRA run's checkpoint: its trained tensors (the base loaded already)
            self.lora.load_trained_state(ckpt, path, self.ema)
        else:
            require_same_shapes(self.raw_model, ckpt["model"], path)
            missing, unexpected = self.raw_model.load_state_dict(ckpt["model"], strict=False)
            self._check_loaded(path, "model", missing, unexpected, load_others)
            if self.ema is not None and ckpt.get("ema") is not None:
                require_same_shapes(self.ema.ema_model, ckpt["ema"], path, what="EMA model")
                missing, unexpected = self.ema.load_state_dict(ckpt["ema"], strict=False)
                self._check_loaded(path, "EMA model", missing, unexpected, load_others)
        if self.clip_grad_norm is not None and ckpt.get("clip_grad_norm") is not None:
            self.clip_grad_norm.load_state_dict(ckpt["clip_grad_norm"])
        if load_optimizer_and_scheduler:
            for name, entry in (ckpt.get("optimizer_and_scheduler") or {}).items():
                if name not in self.optimizer_and_scheduler:
                    raise CheckpointError(f"checkpoint {path} has optimizer '{name}' that the config lacks")
                mine = self.optimizer_and_scheduler[name]
                mine["optimizer"]["module"].load_state_dict(entry["optimizer"]["module"])
                if "scheduler" in entry and "scheduler" in mine:
                    mine["scheduler"]["module"].load_state_dict(entry["scheduler"]["module"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        if load_others:
            self.last_epoch = int(ckpt["last_epoch"])
            self.last_iter = int(ckpt["last_iter"])
            ds = ckpt.get("data_state") or {}
            self.batches_done = int(ds.get("batches_done", 0)) if ds.get("epoch") == self.last_epoch + 1 else 0
            nf = ckpt.get("nonfinite_steps") or {}
            self.nonfinite_in_row = int(nf.get("in_row", 0))
            self.nonfinite_total = int(nf.get("total", 0))
            rng = ckpt.get("rng")
            if rng and len(rng) == self.world_size:
                set_rng_state(rng[self.rank])
            elif rng:
                self.logger.warning(f"checkpoint RNG states are for {len(rng)} processes, this run has "
                                    f"{self.world_size}: RNG streams are not restored (resume is not exact)")
        self.logger.info(f"resumed from {path} (epoch {self.last_epoch}, iteration {self.last_iter}, "
                         f"{self.batches_done} batches into the next epoch)")
        return True
