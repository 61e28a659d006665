"""The files the official VQ-Diffusion release publishes, where they go, and which ones a config needs.

One table, :data:`RELEASED_FILES`, holds the official download script's file list
(``vqdiffusion_download_checkpoints.sh``: each file split into parts ``<stem>_aa``, ``<stem>_ab``, … on
``github.com/tzco/storage/releases/download/vqdiffusion/``, or one whole file) and the destinations the
official README names: the models and ``ViT-B-32.pt`` under ``OUTPUT/pretrained_model/``, the taming
VQ-VAEs and the ITHQ VQ-VAE under ``OUTPUT/pretrained_model/taming_dvae/``. The release publishes no
sizes or hashes, so ``size`` and ``sha256`` are unknown here; ``scripts/download_checkpoints.py`` checks
them when a manifest gives them.

:func:`check_released_files` is what the launchers, ``inference_VQ_Diffusion.py`` and ``VQ_Diffusion``
call before building a model: a missing file becomes one line naming it and the command that downloads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

__all__ = [
    "BASE_URL", "PRETRAINED_DIR", "TAMING_DIR", "ReleasedFile", "RELEASED_FILES", "MissingReleasedFileError",
    "find_released_file", "released_file_for_path", "download_command", "files_needed_by_config",
    "check_released_files",
]

BASE_URL = "https://github.com/tzco/storage/releases/download/vqdiffusion/"
PRETRAINED_DIR = "OUTPUT/pretrained_model"
TAMING_DIR = "OUTPUT/pretrained_model/taming_dvae"
DOWNLOAD_SCRIPT = "python scripts/download_checkpoints.py"


@dataclass(frozen=True)
class ReleasedFile:
    """One released file.

    Args:
        name: the ``--only`` name (the file name without extension).
        filename: the file name on disk.
        folder: destination folder relative to the repository root.
        num_parts: how many ``_aa``, ``_ab``, … parts it is published in; 0 = one whole file.
        description: what it is.
        size: bytes, when known (the release publishes none).
        sha256: hex digest, when known (the release publishes none).
    """

    name: str
    filename: str
    folder: str
    num_parts: int
    description: str
    size: Optional[int] = None
    sha256: Optional[str] = None

    @property
    def path(self) -> str:
        """Destination relative to the repository root, e.g. ``OUTPUT/pretrained_model/CC_pretrained.pth``."""
        return f"{self.folder}/{self.filename}"

    def part_names(self) -> list[str]:
        """``['<name>_aa', '<name>_ab', …]``, or ``[filename]`` for a file published whole."""
        if self.num_parts == 0:
            return [self.filename]
        letters = "abcdefghijklmnopqrstuvwxyz"
        return [f"{self.name}_a{letters[i]}" for i in range(self.num_parts)]

    def urls(self, base_url: str = BASE_URL) -> list[str]:
        base = base_url if base_url.endswith("/") else base_url + "/"
        return [base + p for p in self.part_names()]


def _model(name: str, parts: int, what: str) -> ReleasedFile:
    return ReleasedFile(name, f"{name}.pth", PRETRAINED_DIR, parts, what)


def _codec(name: str, parts: int, what: str) -> ReleasedFile:
    return ReleasedFile(name, f"{name}.pth", TAMING_DIR, parts, what)


RELEASED_FILES: tuple[ReleasedFile, ...] = (
    _model("cc_learnable", 7, "Conceptual Captions text-to-image, learnable classifier-free (config_text.yaml)"),
    _model("CC_pretrained", 7, "Conceptual Captions text-to-image; the COCO and CUB training runs start from it"),
    _model("coco_learnable", 7, "MSCOCO text-to-image, learnable classifier-free (config_text.yaml)"),
    _model("coco_pretrained", 7, "MSCOCO text-to-image (config_text.yaml); run_tune_coco.py starts from it"),
    _model("cub_pretrained", 7, "CUB-200 text-to-image (config_text.yaml)"),
    _model("human_pretrained", 7, "LAION-human text-to-image (config_text.yaml)"),
    _model("imagenet_learnable", 9, "ImageNet class-conditional, learnable cf (configs/imagenet.yaml, imagenet_cf=True)"),
    _model("imagenet_pretrained", 9, "ImageNet class-conditional (config_imagenet.yaml)"),
    _model("ithq_learnable", 11, "ITHQ text-to-image, Improved VQ-Diffusion (configs/ithq.yaml)"),
    _codec("vqgan_ffhq_f16_1024", 10, "taming VQGAN f16, 1024 codes, FFHQ (configs/ffhq.yaml)"),
    _codec("ithq_vqvae", 0, "ITHQ PatchVQGAN, 4096 codes (configs/ithq.yaml)"),
    _codec("taming_f8_8192_openimages_last", 0, "taming Gumbel VQ-VAE f8, 8192 codes, OpenImages (text models)"),
    _codec("vqgan_imagenet_f16_16384", 0, "taming VQGAN f16, 16384 codes, ImageNet (class models)"),
    ReleasedFile("ViT-B-32", "ViT-B-32.pt", PRETRAINED_DIR, 0, "OpenAI CLIP ViT-B/32 (text encoder of every text model)"),
)


class MissingReleasedFileError(FileNotFoundError):
    """Released files are missing; the message is one line naming them and the download command."""


def find_released_file(name: str) -> ReleasedFile:
    """The entry whose ``name`` or ``filename`` is ``name`` (case-sensitive, as the files are).

    Raises:
        KeyError: naming the unknown name and the known ones.
    """
    for f in RELEASED_FILES:
        if name in (f.name, f.filename):
            return f
    raise KeyError(f"unknown released file '{name}'; known: {', '.join(f.name for f in RELEASED_FILES)}")


def released_file_for_path(path: str | Path) -> Optional[ReleasedFile]:
    """The released file that belongs at ``path`` (matched by file name), or None."""
    filename = PurePosixPath(Path(path).as_posix()).name
    for f in RELEASED_FILES:
        if f.filename == filename:
            return f
    return None


def download_command(files: Iterable[ReleasedFile]) -> str:
    """``python scripts/download_checkpoints.py --only A --only B``."""
    names = list(dict.fromkeys(f.name for f in files))
    return " ".join([DOWNLOAD_SCRIPT] + [f"--only {n}" for n in names])


def _walk_nodes(node: Any) -> Iterator[Mapping]:
    if isinstance(node, Mapping):
        yield node
        for v in node.values():
            yield from _walk_nodes(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _walk_nodes(v)


def _set(value: Any) -> Optional[str]:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return str(value)


def files_needed_by_config(config: Mapping) -> list[str]:
    """Files the ``model`` section reads at construction, as written (relative to the working directory).

    The codecs' ``config_path``, ``ckpt_path`` and ``mapping_path``; ``PatchVQVAE``'s defaults when not
    given (the official class hard-codes them); ``OUTPUT/pretrained_model/ViT-B-32.pt`` for a
    ``clip_name: ViT-B/32`` embedding without ``clip_path``.
    """
    from vqdiff.modeling.embeddings.clip_text_embedding import OFFICIAL_CLIP_PATHS

    needed: list[str] = []
    for node in _walk_nodes(config.get("model", {})):
        params = node.get("params") if isinstance(node.get("params"), Mapping) else None
        target = str(node.get("target", ""))
        if params is None:
            continue
        keys = ("config_path", "ckpt_path", "mapping_path")
        if target.endswith("PatchVQVAE"):
            defaults = {"config_path": f"{TAMING_DIR}/config.yaml", "ckpt_path": f"{TAMING_DIR}/ithq_vqvae.pth"}
            for k in keys:
                v = _set(params[k]) if k in params else defaults.get(k)
                if v:
                    needed.append(v)
        elif "codec" in target.lower() or "vqvae" in target.lower():
            needed += [v for v in (_set(params.get(k)) for k in keys) if v]
        if "clip_name" in params and _set(params.get("clip_path")) is None:
            official = OFFICIAL_CLIP_PATHS.get(str(params["clip_name"]))
            if official:
                needed.append(official)
    return list(dict.fromkeys(needed))


def check_released_files(paths: Sequence[str | Path], root: str | Path | None = None) -> None:
    """Raise :class:`MissingReleasedFileError` when any of ``paths`` (relative to ``root``, default the
    working directory) is missing: one line naming the missing files and, for released ones, the
    ``download_checkpoints.py --only …`` command that fetches them."""
    base = Path.cwd() if root is None else Path(root)
    missing = [str(p) for p in dict.fromkeys(map(str, paths)) if not (base / p).is_file()]
    if not missing:
        return
    released = [f for f in (released_file_for_path(p) for p in missing) if f is not None]
    others = [p for p in missing if released_file_for_path(p) is None]
    msg = f"missing file{'s' if len(missing) > 1 else ''} {', '.join(missing)} (under '{base}')"
    if released:
        msg += f"; download with: {download_command(released)}"
    if others:
        msg += f"; not part of the release, check the path: {', '.join(others)}"
    raise MissingReleasedFileError(msg)
