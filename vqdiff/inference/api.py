"""The notebook API of VQ-Diffusion (arXiv 2111.14822) and Improved VQ-Diffusion (arXiv 2205.16007).

Re-exported by the top-level ``inference_VQ_Diffusion.py`` and used exactly as the official one::

    from inference_VQ_Diffusion import VQ_Diffusion
    m = VQ_Diffusion(config='OUTPUT/pretrained_model/config_text.yaml',
                     path='OUTPUT/pretrained_model/human_pretrained.pth')
    m.inference_generate_sample_with_condition("a beautiful smiling woman", truncation_rate=0.85,
                                               save_root="RESULT", batch_size=4)
    m.inference_generate_sample_with_condition("a woman in yellow dress", truncation_rate=0.85,
                                               save_root="RESULT", batch_size=4, fast=2)

Differences from the official class (each deliberate): every call uses its own truncation rate,
guidance scale, prior rule and batch size (the official one silently keeps the first call's); a
``seed`` makes a call reproducible; images are also returned as PIL images; the model runs on CUDA
when available and on the CPU otherwise; a missing checkpoint or released file raises
``FileNotFoundError`` naming the ``scripts/download_checkpoints.py --only …`` command; ``learnable_cf``
defaults to the config's value (the official default False overrode it); caption folder names are made
file-system safe (``safe_name``); files are read without unpickling code unless
``allow_unsafe_pickle=True``; keys that did not load are reported in one summary (``self.load_report``).
"""

from __future__ import annotations

import logging
import numbers
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from PIL import Image

from vqdiff.inference.diffusers_import import diffusers_model_config, is_diffusers_folder, load_diffusers
from vqdiff.inference.images import make_grid, safe_name, save_images, to_pil_images
from vqdiff.inference.loading import (
    LoadReport,
    build_model,
    choose_device,
    freeze_for_inference,
    load_model_weights,
    parameter_counts,
    prepare_config,
    read_checkpoint_file,
    set_learnable_cf,
    split_checkpoint,
)
from vqdiff.modeling.diffusion.prompt_parts import composed_request, format_prompt_parts
from vqdiff.modeling.diffusion.sampling_options import DEFAULT_TRUNCATION_RATE, SamplingOptions, speed_fields
from vqdiff.utils.released_files import check_released_files, files_needed_by_config

__all__ = ["VQ_Diffusion", "request_options", "sample_type_string"]

logger = logging.getLogger("vqdiff.inference")


def request_options(truncation_rate: float = DEFAULT_TRUNCATION_RATE, fast: Any = False, infer_speed: Any = False,
                    **fields: Any) -> SamplingOptions:
    """The notebook API's arguments as ``SamplingOptions`` (parsed here, once): ``truncation_rate`` r, plus
    ``fast=k`` (keep one step in k: k=2 halves the network calls; ``skip_step = k - 1``) or the Improved
    API's ``infer_speed=s`` (s >= 2 skips ``int(s) - 1`` steps, s < 1 reveals s x the tokens per call);
    ``fields``: the other ``SamplingOptions`` fields. Range errors name the argument."""
    use_fast = fast not in (False, None, 0)
    use_speed = infer_speed not in (False, None, 0)
    if use_fast and use_speed:
        raise ValueError(f"give either fast (={fast!r}) or infer_speed (={infer_speed!r}), not both")
    if use_fast:
        if isinstance(fast, bool) or not isinstance(fast, int) or fast < 2:
            raise ValueError(f"fast must be an int >= 2 (fast=k visits every k-th diffusion step), got {fast!r}")
        fields["skip_step"] = fast - 1
    elif use_speed:
        fields.update(speed_fields(float(infer_speed)))
    try:
        return SamplingOptions(truncation_rate=float(truncation_rate), **fields)
    except ValueError as err:
        raise ValueError(str(err).replace("sampling option ", "")) from None


def sample_type_string(truncation_rate: float, fast: Any = False, infer_speed: Any = False) -> str:
    """The official ``sample_type`` of these API arguments (for logs): ``top{r}r`` plus ``,fast{k-1}`` or
    ``,time{s}``; the same checks as :func:`request_options`."""
    return str(request_options(truncation_rate, fast, infer_speed))


class VQ_Diffusion:
    """Load a VQ-Diffusion model (official or vqdiff config and checkpoint) and sample images.

    Args:
        config: YAML path (official files name ``image_synthesis.…`` classes and paths relative to the
            working directory, resolved from it as the official code does) or a config mapping.
        path: checkpoint: official ``.pth`` (``model`` + ``ema`` entries), a converted vqdiff checkpoint,
            or a ``.safetensors`` weight file. A diffusers ``VQDiffusionPipeline`` folder (holding
            ``model_index.json``) may be given as ``config`` (with no ``path``) or as ``path``.
        imagenet_cf: build the class network with 1001 classes (a learned null label for classifier-free
            guidance), as the official ``imagenet_cf``.
        device: where to run; default CUDA when available, else CPU.
        allow_unsafe_pickle: allow a legacy checkpoint that ``torch.load(weights_only=True)`` refuses
            (unpickling can run code: only for files you trust).
        lora: a LoRA adapter folder (``OUTPUT/<run>/checkpoint/last_lora``, written by a ``solver.lora`` run)
            added to the ``path`` model; ``lora_scale`` scales it (0: the base model exactly, 1: as trained);
            the whole folder is checked before the model is touched; when ``path``'s SHA-256 differs from
            the one the adapter records it raises ``LoraError``, or with ``lora_allow_base_mismatch`` warns
            (docs/finetuning.md).

    Raises:
        FileNotFoundError: ``path`` (or a file the config names) does not exist.
    """

    def __init__(
        self,
        config: str | os.PathLike | Mapping,
        path: Optional[str | os.PathLike] = None,
        imagenet_cf: bool = False,
        device: Optional[str | torch.device] = None,
        allow_unsafe_pickle: bool = False,
        learnable_cf: Optional[bool] = None,
        lora: Optional[str | os.PathLike] = None,
        lora_scale: float = 1.0,
        lora_allow_base_mismatch: bool = False,
    ):
        self.lora_record: Optional[dict] = None
        if is_diffusers_folder(config) or is_diffusers_folder(path):  # a VQDiffusionPipeline folder
            if lora is not None:
                raise TypeError("lora= needs a checkpoint 'path' (its SHA-256 is checked), not a diffusers folder")
            self._init_from_diffusers(config if is_diffusers_folder(config) else path, device)
            return
        if path is None:
            raise TypeError(f"VQ_Diffusion needs a checkpoint 'path' for config {config!r} (or a diffusers folder)")
        self.device = choose_device(device)
        self.allow_unsafe_pickle = bool(allow_unsafe_pickle)
        self.imagenet_cf = bool(imagenet_cf)
        self.info = self.get_model(ema=True, model_path=path, config_path=config, learnable_cf=learnable_cf,
                                   imagenet_cf=imagenet_cf)
        self.model = self.info["model"]
        self.epoch = self.info["epoch"]
        self.model_name = self.info["model_name"]
        if lora is not None:
            from vqdiff.adapters.lora import apply_adapter

            self.lora_record = apply_adapter(self.model, lora, scale=float(lora_scale), base_path=path,
                                             allow_base_mismatch=bool(lora_allow_base_mismatch))
        self.model.to(self.device)
        freeze_for_inference(self.model)

    def get_model(self, ema: bool, model_path: str | os.PathLike, config_path: str | os.PathLike | Mapping,
                  learnable_cf: Optional[bool] = None, imagenet_cf: bool = False) -> dict:
        """Build the config's model and load ``model_path`` (the official method and its result keys):
        ``{'model', 'epoch', 'model_name', 'parameter'}``; ``ema`` makes the checkpoint's EMA weights win.

        ``learnable_cf`` True/False sets ``learnable_cf`` at ``model.params`` and at the diffusion
        config, as the official argument does; None (our default) keeps the config's value (the official
        default False switched off the learned null text of ``configs/ithq.yaml``). Also sets
        ``self.config`` and ``self.load_report``.

        Raises:
            FileNotFoundError: the checkpoint or a file the config names is missing; one line naming
                them and the ``scripts/download_checkpoints.py --only …`` command for released files.
        """
        self.config = prepare_config(config_path, imagenet_cf=imagenet_cf)
        if learnable_cf is not None:
            set_learnable_cf(self.config, bool(learnable_cf))
        check_released_files([str(model_path)] + files_needed_by_config(self.config))
        model = build_model(self.config)
        ckpt = read_checkpoint_file(Path(model_path), allow_unsafe_pickle=self.allow_unsafe_pickle)
        model_sd, ema_sd, epoch = split_checkpoint(ckpt, str(model_path))
        del ckpt
        self.load_report: LoadReport = load_model_weights(model, model_sd, ema_sd if ema else None,
                                                          str(model_path), epoch)
        if self.load_report.ok and not self.load_report.hints:
            logger.info("%s", self.load_report)
        else:
            warnings.warn(str(self.load_report), stacklevel=3)
        parts = Path(model_path).parts
        model_name = (parts[-3] if "OUTPUT" in parts and len(parts) >= 3
                      else Path(config_path).stem if isinstance(config_path, (str, os.PathLike)) else "model")
        return {"model": model, "epoch": epoch, "model_name": model_name, "parameter": parameter_counts(model)}

    def _init_from_diffusers(self, folder: str | os.PathLike, device: Optional[str | torch.device]) -> None:
        """Build the model from a diffusers ``VQDiffusionPipeline`` folder (see ``load_diffusers``)."""
        self.device = choose_device(device)
        self.config = diffusers_model_config(folder)
        self.imagenet_cf = False
        self.model = load_diffusers(folder)
        self.epoch = 0
        self.load_report = LoadReport(source=str(folder))  # load_diffusers raises on any unmatched tensor
        self.model.to(self.device)
        freeze_for_inference(self.model)
        self.model_name = Path(folder).resolve().name
        self.allow_unsafe_pickle = False
        self.info = {"model": self.model, "epoch": 0, "model_name": self.model_name,
                     "parameter": parameter_counts(self.model)}

    # ---------------------------------------------------------------------------------------- helpers
    @property
    def condition_kind(self) -> Optional[str]:
        """``'text'`` (DALLE), ``'label'`` (C_DALLE) or ``None`` (UC_DALLE)."""
        info = getattr(self.model, "condition_info", None)
        return info.get("key") if isinstance(info, Mapping) else None

    def _require(self, kind: Optional[str], method: str) -> None:
        if self.condition_kind != kind:
            right = {"text": "inference_generate_sample_with_condition",
                     "label": "inference_generate_sample_with_class",
                     None: "inference_generate_sample_unconditional"}[self.condition_kind]
            raise TypeError(
                f"{method} needs a {'text' if kind == 'text' else 'class' if kind == 'label' else 'unconditional'}"
                f" model, but this is a {type(self.model).__name__}; use {right}"
            )

    def _generator(self, seed: Optional[int]) -> Optional[torch.Generator]:
        if seed is None:
            return None
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -2**63 <= int(seed) < 2**64:
            raise ValueError(f"seed must be an integer in [-2**63, 2**64 - 1] (torch's generator range), got {seed!r}")
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed))
        return g

    @staticmethod
    def _check_batch(batch_size: int) -> int:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return batch_size

    def _null_condition(self, learnable_cf: bool) -> str:
        """The ``null_condition`` option for ``learnable_cf``: the learned null text when asked for and
        present, else CLIP('') (the model is not touched)."""
        trans = self.model.transformer
        has_learned = bool(getattr(trans, "learnable_cf", False)) and hasattr(trans, "empty_text_embed")
        if learnable_cf and not has_learned:
            logger.info("learnable_cf=True but the model has no learned null text: guidance uses CLIP('')")
        return "learned" if learnable_cf and has_learned else "empty"

    @staticmethod
    def _output_folder(save_root: Optional[str | os.PathLike], name: str) -> None:
        """Create ``save_root/<name>`` before sampling, so that a folder that cannot be written fails now
        (naming it) rather than after minutes of sampling, with the samples lost."""
        if save_root is None:
            return
        folder = Path(save_root) / safe_name(name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise type(err)(f"cannot write samples to '{folder}': {err.strerror or err}") from err
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"cannot write samples to '{folder}': permission denied")

    def _finish(self, content: torch.Tensor, save_root: Optional[str | os.PathLike], name: str,
                ext: str = "png") -> list[Image.Image]:
        images = to_pil_images(content)
        if save_root is not None:
            save_images(images, Path(save_root) / safe_name(name), ext=ext)
        return images

    @staticmethod
    def grid(images: Sequence[Image.Image] | torch.Tensor, nrow: Optional[int] = None, padding: int = 2) -> Image.Image:
        """All images tiled into one (``nrow`` per row; default about square)."""
        return make_grid(images, nrow=nrow, padding=padding)

    # ---------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def inference_generate_sample(
        self,
        condition: Any,
        options: SamplingOptions,
        save_root: Optional[str | os.PathLike],
        batch_size: int,
        callback: Optional[Callable[[dict], None]] = None,
        negative_prompt: Any = None,
    ) -> list[Image.Image]:
        """The core of the three official methods: ``batch_size`` images of ``condition`` (a caption, a class
        label, or None for an unconditional model) under ``options``, saved as ``save_root/<condition>/000000.png``
        (``.jpg`` for class labels, as the official method; ``unconditional/`` without condition) and returned.
        Each image's ``info['sampling_options']`` is the request as run, precision included ('top0.85r,fp32').
        A composed prompt (composable guidance: ``condition`` written ``"a red shape:3 AND a circle"``, a list of
        ``(condition, weight)``, or ``options.prompt_parts``) is sampled in one batched network call per step
        (:func:`composed_request`); its folder and each image's ``info['prompt_parts']`` are the written form
        of its parts."""
        n = self._check_batch(batch_size)
        kind = self.condition_kind
        condition, options = composed_request(condition, options)
        parts = options.prompt_parts
        name = "unconditional" if kind is None else format_prompt_parts(parts) if parts else str(condition)
        batch = None if kind is None or parts else {kind: [condition]}
        options = options.for_device(self.device)  # precision 'auto': the choice is logged here
        logger.info("sampling %d image(s) of %r with %s", n, name, options.to_sample_type(with_precision=True))
        self._output_folder(save_root, name)
        out = self.model.generate_content(batch=batch, filter_ratio=0, replicate=n, options=options,
                                          callback=callback, negative_prompt=negative_prompt)
        images = self._finish(out["content"], save_root, name, ext="jpg" if kind == "label" else "png")
        for image in images:
            image.info["sampling_options"] = out["options"]
            if parts:
                image.info["prompt_parts"] = name
        return images

    @torch.no_grad()
    def inference_inpaint(
        self,
        image: Any,
        mask: Any,
        text: Any = None,
        truncation_rate: float = DEFAULT_TRUNCATION_RATE,
        save_root: Optional[str | os.PathLike] = None,
        guidance_scale: Any = 1.0,
        negative_prompt: Any = None,
        filter_ratio: float = 0.0,
        seed: Optional[int] = None,
        callback: Optional[Callable[[dict], None]] = None,
        precision: str = "fp32",
    ) -> list[Image.Image]:
        """Repaint the part of ``image`` under ``mask`` following ``text`` (or a class label); keep the rest.

        ``image``: PIL, array or (B, 3, H, W) tensor in [0, 255]; ``mask``: pixel (H, W) or token (h, w)
        space, nonzero = repaint (a token is repainted when any of its pixels is). Only the masked tokens
        are sampled, the others stay fixed at every step. With ``save_root`` the results are saved as
        ``save_root/<text>/000000.png`` and ``inpaint_000000.png`` shows input | mask | result. ``precision`` as
        in :meth:`inference_generate_sample_with_condition`.
        """
        from vqdiff.editing import inpaint_image

        options = request_options(truncation_rate, guidance_scale=guidance_scale, generator=self._generator(seed),
                                  precision=precision).for_device(self.device)
        self._output_folder(save_root, str(text))
        out = inpaint_image(
            self.model, image, mask, text, options=options, negative_prompt=negative_prompt,
            filter_ratio=filter_ratio, callback=callback,
            save_path=None if save_root is None else str(Path(save_root) / safe_name(str(text)) / "inpaint_000000.png"),
        )
        return self._finish(out["content"], save_root, str(text))

    @torch.no_grad()
    def inference_generate_sample_with_condition(
        self,
        text: str,
        truncation_rate: float,
        save_root: Optional[str | os.PathLike],
        batch_size: int,
        fast: Any = False,
        infer_speed: Any = False,
        guidance_scale: Any = 1.0,
        prior_rule: int = 0,
        prior_weight: float = 0,
        learnable_cf: bool = True,
        seed: Optional[int] = None,
        callback: Optional[Callable[[dict], None]] = None,
        negative_prompt: Optional[str] = None,
        precision: str = "fp32",
        compile: bool = False,
    ) -> list[Image.Image]:
        """``batch_size`` images of ``text``, saved as ``save_root/<text>/000000.png`` … and returned.

        ``fast=k`` visits every k-th step (official seed API); ``infer_speed=s`` is the Improved API
        (s >= 2 skips steps, s < 1 reveals fewer tokens per step); ``guidance_scale`` != 1 applies
        classifier-free guidance with the learned null text (``learnable_cf`` and a learnable-cf
        checkpoint) or the CLIP embedding of ''; ``prior_rule`` 1/2 and ``prior_weight`` are the Improved
        high-quality / purity rules. ``seed`` makes the call reproducible; ``callback(info)`` runs after
        every diffusion step; ``save_root=None`` saves nothing. ``guidance_scale`` may also be a schedule
        over the steps (``'linear:a:b'``, ``'cosine:a:b'``, a list of T values); ``negative_prompt`` replaces
        the unconditional branch of guidance by that text ('' = ordinary guidance). ``precision``: the network's
        precision, ``'fp32'`` (default, the official tokens), ``'bf16'``, ``'fp16'`` or ``'auto'`` (bf16 where
        the device runs it natively, else fp32; the choice is logged and in each image's
        ``info['sampling_options']``); ``compile=True`` runs the network through ``torch.compile``.
        Composable guidance: ``text`` written as parts, ``"a red shape:3 AND a circle"``, or given as a list of
        ``(text, weight)``; each part's weight (``guidance_scale`` where none is written) guides towards it.
        """
        self._require("text", "inference_generate_sample_with_condition")
        if not isinstance(text, (str, list, tuple)):
            raise TypeError(f"text must be a str (or a list of (text, weight) parts), got {type(text).__name__}")
        self._check_batch(batch_size)
        options = request_options(truncation_rate, fast, infer_speed, guidance_scale=guidance_scale,
                                  null_condition=self._null_condition(learnable_cf), prior_rule=int(prior_rule),
                                  prior_weight=float(prior_weight), generator=self._generator(seed),
                                  precision=precision, compile=compile)
        return self.inference_generate_sample(text, options, save_root, batch_size, callback, negative_prompt)

    @torch.no_grad()
    def inference_generate_sample_with_class(
        self,
        label: Optional[int] = None,
        truncation_rate: Optional[float] = None,
        save_root: Optional[str | os.PathLike] = None,
        batch_size: Optional[int] = None,
        fast: Any = False,
        infer_speed: Any = False,
        guidance_scale: Any = 1.0,
        seed: Optional[int] = None,
        callback: Optional[Callable[[dict], None]] = None,
        text: Optional[int] = None,
        precision: str = "fp32",
        compile: bool = False,
    ) -> list[Image.Image]:
        """``batch_size`` images of class ``label``, saved as ``save_root/<label>/000000.jpg`` … and returned.

        ``text=`` is the official name of the class argument (give one of ``label`` and ``text``); the
        images are JPEG files as the official method writes them. Guidance (``guidance_scale`` != 1, a
        number or a schedule) uses the null label: the learned row when the model was built with
        ``imagenet_cf=True``, else the mean class embedding (official behaviour). ``precision`` and ``compile``
        as in :meth:`inference_generate_sample_with_condition`; ``label`` may be a list of ``(label, weight)``
        parts (composable guidance).
        """
        self._require("label", "inference_generate_sample_with_class")
        if text is not None:
            if label is not None:
                raise TypeError(f"give the class as label or as text (its official name), not both: "
                                f"label={label!r}, text={text!r}")
            label = text
        for arg, value in (("label", label), ("truncation_rate", truncation_rate), ("batch_size", batch_size)):
            if value is None:
                raise TypeError(f"inference_generate_sample_with_class() missing required argument: '{arg}'")
        single = not isinstance(label, (list, tuple))
        if single and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
            raise ValueError(f"label must be a non-negative int class index (or a list of (label, weight) parts), "
                             f"got {label!r}")
        self._check_batch(batch_size)
        options = request_options(truncation_rate, fast, infer_speed, guidance_scale=guidance_scale,
                                  generator=self._generator(seed), precision=precision, compile=compile)
        return self.inference_generate_sample(label, options, save_root, batch_size, callback)

    @torch.no_grad()
    def inference_generate_sample_unconditional(
        self,
        truncation_rate: float,
        save_root: Optional[str | os.PathLike],
        batch_size: int,
        fast: Any = False,
        infer_speed: Any = False,
        seed: Optional[int] = None,
        callback: Optional[Callable[[dict], None]] = None,
        precision: str = "fp32",
        compile: bool = False,
    ) -> list[Image.Image]:
        """``batch_size`` images of an unconditional model (FFHQ), saved as ``save_root/unconditional/…``;
        ``precision`` and ``compile`` as in :meth:`inference_generate_sample_with_condition`."""
        self._require(None, "inference_generate_sample_unconditional")
        self._check_batch(batch_size)
        options = request_options(truncation_rate, fast, infer_speed, generator=self._generator(seed),
                                  precision=precision, compile=compile)
        return self.inference_generate_sample(None, options, save_root, batch_size, callback)
