"""Find and load frozen-LMM checkpoints (hub id or local folder), failing with one clear error when absent.

Offline (`local_files_only=True`, or HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1) a hub id is resolved in the
local Hugging Face cache only; a missing folder, a folder without weights, or an uncached hub id raises
`MissingWeightsError` naming what is missing and where it goes, instead of a deep transformers traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from huggingface_hub import constants, is_offline_mode, snapshot_download
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, PreTrainedModel, ProcessorMixin

from flmm.errors import ConfigError, MissingWeightsError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """`"bfloat16"` / `"torch.bfloat16"` / `torch.bfloat16` -> `torch.bfloat16`; ConfigError otherwise."""
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(
            f"torch_dtype: expected a floating dtype name like 'float32' or 'bfloat16', got {name!r}"
        )
    return dtype


def _check_folder(folder: Path, what: str) -> None:
    missing = [name for name in ("config.json",) if not (folder / name).is_file()]
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if missing:
        raise MissingWeightsError(
            f"{what} at {folder} lacks {', '.join(missing)}. Put a complete Hugging Face checkpoint there "
            "(config.json, weights, tokenizer and processor files), e.g. with "
            f"`hf download <hub id> --local-dir {folder}` on a machine with network access."
        )


def resolve_checkpoint(
    name_or_path: str | os.PathLike, local_files_only: bool | None = None, revision: str | None = None
) -> str:
    """A local folder or a hub id that `from_pretrained` can load; MissingWeightsError when it cannot.

    Online, a hub id is returned as is (from_pretrained downloads it). Offline, it is looked up in the
    cache (HF_HUB_CACHE) at `revision` (a branch, tag or commit; default the cached `main`) and the cached
    snapshot folder is returned.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        _check_folder(path, "LMM checkpoint folder")
        return str(path)
    if not _HUB_ID.fullmatch(name):
        raise MissingWeightsError(
            f"LMM checkpoint folder {path} does not exist. Put a Hugging Face checkpoint there (config.json, "
            f"weights, tokenizer and processor files), e.g. `hf download llava-hf/llava-1.5-7b-hf "
            f"--local-dir {path}`, or set the model to a hub id."
        )
    offline = bool(local_files_only) or is_offline_mode()
    if not offline:
        return name
    try:
        folder = Path(snapshot_download(name, revision=revision, local_files_only=True))
    except (FileNotFoundError, ValueError) as err:
        at = f" at revision {revision!r}" if revision else ""
        raise MissingWeightsError(
            f"LMM weights {name!r}{at} are not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
            "and downloads are off (HF_HUB_OFFLINE=1 or local_files_only). Fetch them once on a machine with "
            f"network access with `hf download {name}` into that cache (same HF_HOME), or download them "
            f"into a folder and set the model to that folder's path. (huggingface_hub: {err})"
        ) from None
    _check_folder(folder, f"Cached snapshot of {name!r}")
    return str(folder)


def without_video(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`processor_class` accepting `video_processor=None`.

    Processors with a video slot (Qwen2/2.5/3-VL, LLaVA-OneVision, InternVL, ...) refuse to be built
    without a video processor, and every video processor needs torchvision, which many machines lack
    (DESIGN.md §6). Images never go through the video processor, so an image-only processor is sound.
    """

    class ImageOnly(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnly.__name__ = ImageOnly.__qualname__ = processor_class.__name__
    return ImageOnly


def load_processor(source: str, offline: bool) -> ProcessorMixin:
    """The checkpoint's processor; without torchvision, built from its tokenizer and image processor
    (`AutoImageProcessor` falls back to the PIL image processors) with no video processor."""
    try:
        return AutoProcessor.from_pretrained(source, local_files_only=offline)
    except (ImportError, ValueError, TypeError, AttributeError) as err:
        if "video" not in str(err).lower() and "torchvision" not in str(err).lower():
            raise
    import transformers

    config = AutoImageProcessor.from_pretrained(source, local_files_only=offline)
    name = getattr(config, "processor_class", None) or _processor_class_name(source)
    processor_class = getattr(transformers, name)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    template = getattr(tokenizer, "chat_template", None)
    return without_video(processor_class)(
        image_processor=config,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=template,
        **saved_processor_kwargs(source),
    )


def saved_processor_kwargs(source: str) -> dict:
    """The processor's own settings saved beside its parts (processor_config.json: LLaVA-OneVision's
    num_image_tokens and feature strategy, InternVL's image_seq_length, ...), which building the processor
    from its parts would otherwise lose; its class and chat template are passed on their own."""
    path = Path(source) / "processor_config.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    return {k: v for k, v in saved.items() if k not in ("processor_class", "auto_map", "chat_template")}


def _processor_class_name(source: str) -> str:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = Path(source) / name
        if path.is_file():
            value = json.loads(path.read_text()).get("processor_class")
            if value:
                return value
    raise MissingWeightsError(
        f"{source}: no processor_class in its processor files; cannot build its processor"
    )


def load_pretrained(
    model_class: type[PreTrainedModel],
    name_or_path: str | os.PathLike,
    dtype: torch.dtype,
    local_files_only: bool | None = None,
    processor_loader: Callable[[str, bool], ProcessorMixin] | None = None,
    revision: str | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load `model_class` and its processor from a hub id (at `revision`) or folder (see
    `resolve_checkpoint`); `processor_loader(source, offline)` replaces `load_processor` (a family whose
    processor class needs what the machine lacks, e.g. Pixtral's torchvision)."""
    source = resolve_checkpoint(name_or_path, local_files_only, revision)
    offline = bool(local_files_only) or is_offline_mode()
    try:
        at_revision = {"revision": revision} if revision and source == os.fspath(name_or_path) else {}
        model = model_class.from_pretrained(source, dtype=dtype, local_files_only=offline, **at_revision)
        processor = (processor_loader or load_processor)(source, offline)
    except OSError as err:
        raise MissingWeightsError(
            f"could not load LMM {os.fspath(name_or_path)!r} ({source}): {err}. Check the hub id, or "
            "download the checkpoint into a folder and set the model to that folder's path."
        ) from None
    return model, processor


def weights_source(
    name_or_path: str | os.PathLike, local_files_only: bool | None = None, revision: str | None = None
) -> dict[str, str | None]:
    """What identifies a loaded LMM's weights, for checkpoints to record: `{"model", "revision",
    "fingerprint"}`. `revision` is the hub commit of a hub id's cached snapshot (None for a folder);
    `fingerprint` is `folder_fingerprint` of the folder the weights were read from."""
    name = os.fspath(name_or_path)
    if Path(name).expanduser().is_dir():
        return {"model": name, "revision": None, "fingerprint": folder_fingerprint(Path(name).expanduser())}
    folder = Path(snapshot_download(name, revision=revision, local_files_only=True))
    return {"model": name, "revision": folder.name, "fingerprint": folder_fingerprint(folder)}


def folder_fingerprint(folder: Path, edge_bytes: int = 1 << 16) -> str:
    """A sha256 of a checkpoint folder that changes when its weights do, read in well under a second at 7B.

    Every file's relative path and size, the whole content of files up to 1 MiB (configs, tokenizer) and
    the first and last `edge_bytes` of larger ones (safetensors headers name every tensor's dtype, shape
    and offsets). Hidden entries (`.cache/` of `hf download --local-dir`) are left out: they change
    without the weights changing.
    """
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= 1 << 20:
                digest.update(handle.read())
            else:
                digest.update(handle.read(edge_bytes))
                handle.seek(size - edge_bytes)
                digest.update(handle.read(edge_bytes))
    return "sha256:" + digest.hexdigest()
