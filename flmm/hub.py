"""Trained heads as folders: what `tools/export_head.py` writes, and what `flmm.Grounder.from_pretrained`,
`tools/test.py --ckpt DIR` and `tools/demo.py --ckpt DIR` load (`flmm.engine.evaluate.load_checkpoint`).

A head folder (a Hugging Face hub repository holds the same files):

    model.safetensors  the trainable weights: the tensors of the tools/train.py checkpoint's `state_dict`
                       (mask head; the refiner's prompt encoder, mask decoder and language projection; the
                       keyword selector), never the LMM, SAM's image encoder or optimizer state
    config.json        format_version; flmm_version; config (the run's resolved config, so model.mask_head,
                       model.refiner, model.selector and what it was trained on); lmm (the hub id or folder
                       it was trained on, hub revision, `folder_fingerprint`, architecture); sam (model type,
                       checkpoint file name, sha256); weights_sha256 (of model.safetensors); trained (the
                       checkpoint, epoch, global step)
    README.md          the model card: what the head needs, what it was trained on, its results
    results.json       tools/test.py's results of that checkpoint, when its run has them

Loading reads JSON and safetensors only: nothing is unpickled. The LMM and SAM are loaded from the files
the config names (toy models that ship with flmm are recorded as `${shipped:...}`, found wherever flmm is
installed; other paths can be overridden, `model.refiner.checkpoint=PATH`) and must be the weights the head
was trained with: the LMM's revision / fingerprint (`flmm.engine.module.check_same_weights`) and SAM's sha256
(`check_same_sam`) are compared.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import is_offline_mode, snapshot_download
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from flmm.engine.build import config_to_dict
from flmm.engine.metrics import format_results_table
from flmm.errors import ConfigError, FlmmError
from flmm.shipped import SHIPPED_FOLDERS, shipped_root

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
RESULTS_FILE = "results.json"
LAYOUT = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, RESULTS_FILE)
# config.json's fields and the JSON type each must have (`sam` is null for a head without a refiner).
FIELDS: dict[str, tuple[type, ...]] = {
    "format_version": (int,),
    "flmm_version": (str,),
    "config": (dict,),
    "lmm": (dict,),
    "sam": (dict, type(None)),
    "weights_sha256": (str,),
    "trained": (dict,),
}
# What may be fetched from the hub: `owner/name`, never a path with more parts or a checkpoint file.
_HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def flmm_version() -> str:
    """The installed flmm's version (package metadata, i.e. pyproject.toml's), else the source's own."""
    try:
        return version("flmm")
    except PackageNotFoundError:
        from flmm import __version__

        return __version__


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks (a SAM ViT-H file is 2.5 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_head(checkpoint_path: str | Path, out_dir: str | Path, overrides: Sequence[str] = ()) -> Path:
    """Write the head folder of a tools/train.py checkpoint into `out_dir` (new, empty, or an earlier
    export, whose files are replaced); return `out_dir`.

    overrides: `key=value` changes of the recorded config, e.g. `model.lmm.model=HUB_ID` for an LMM trained
    from a local copy of a hub model (the weights are still compared when the head is loaded).
    """
    # evaluate reads head folders through this module, so it is imported only when exporting.
    from flmm.engine.evaluate import checkpoint_config, default_out_dir, load_checkpoint

    checkpoint_path = Path(checkpoint_path)
    if checkpoint_path.is_dir():
        raise FlmmError(
            f"{checkpoint_path} is a folder; export takes a checkpoint file of tools/train.py, e.g. "
            "RUN/checkpoints/last.ckpt"
        )
    checkpoint = load_checkpoint(checkpoint_path)
    cfg = checkpoint_config(checkpoint, overrides, source=str(checkpoint_path))
    out = Path(out_dir)
    _check_out_dir(out)
    source = checkpoint.get("flmm_lmm_source") or {"model": None, "revision": None, "fingerprint": None}
    config = config_to_dict(cfg)
    lmm_cfg, refiner_cfg = config["model"]["lmm"], config["model"]["refiner"]
    if source["revision"] and not lmm_cfg.get("revision"):
        # Pinned, so that the head loads the hub commit it was trained on, not whatever `main` is then.
        lmm_cfg["revision"] = source["revision"]
    lmm_cfg["model"] = _portable(lmm_cfg["model"])
    if refiner_cfg and refiner_cfg.get("checkpoint"):
        refiner_cfg["checkpoint"] = _portable(refiner_cfg["checkpoint"])
    sam = _sam_record(cfg.model.refiner)
    results_file = default_out_dir(checkpoint_path) / RESULTS_FILE
    results = _results_of(results_file, checkpoint_path)
    # Written only once every check above has passed, so a refused export leaves no partial folder.
    out.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in checkpoint["state_dict"].items()}, out / WEIGHTS_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "flmm_version": flmm_version(),
        "config": config,
        "lmm": {**source, "identity": checkpoint["flmm_identity"]},
        "sam": sam,
        "weights_sha256": file_sha256(out / WEIGHTS_FILE),
        "trained": {
            "checkpoint": str(checkpoint_path.resolve()),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        },
    }
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / RESULTS_FILE).unlink(missing_ok=True)  # an earlier export's
    if results is not None:
        shutil.copyfile(results_file, out / RESULTS_FILE)
    (out / CARD_FILE).write_text(model_card(meta, checkpoint["state_dict"], results), encoding="utf-8")
    return out


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FlmmError(f"{out} is a file; give a folder to write the head into")
    others = sorted(p.name for p in out.iterdir() if p.name not in LAYOUT) if out.is_dir() else []
    if others:
        raise FlmmError(
            f"{out} holds other files than a head folder's ({', '.join(others[:5])}); export into a "
            "new or empty folder"
        )


def _portable(path: str | None) -> str | None:
    """`${shipped:...}` for a file that ships with flmm (the toy models), so that the head loads wherever
    flmm is installed; any other path or hub id as it is."""
    if not path or not Path(path).exists():
        return path
    try:
        relative = Path(path).resolve().relative_to(shipped_root())
    except ValueError:
        return path
    return f"${{shipped:{relative.as_posix()}}}" if relative.parts[0] in SHIPPED_FOLDERS else path


def _sam_record(refiner: DictConfig | None) -> dict[str, str | None] | None:
    """SAM's model type, checkpoint file name and sha256 (None without a file: a tiny SAM at its random
    initial weights); None for a head without a refiner."""
    if refiner is None:
        return None
    checkpoint = refiner.get("checkpoint")
    if not checkpoint:
        return {"model_type": refiner.get("model_type"), "checkpoint": None, "sha256": None}
    path = Path(str(checkpoint))
    if not path.is_file():
        raise FlmmError(
            f"model.refiner.checkpoint={path} not found: the export records the sha256 of the SAM weights "
            "the head was trained with; point model.refiner.checkpoint=PATH at them"
        )
    return {"model_type": refiner.get("model_type"), "checkpoint": path.name, "sha256": file_sha256(path)}


def _results_of(path: Path, checkpoint_path: Path) -> dict | None:
    """The results.json at `path` if it scores `checkpoint_path` (tools/test.py records which), else None."""
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise FlmmError(
            f"{path}: not valid JSON ({exc}); evaluate the checkpoint again, or delete it"
        ) from None
    scored = isinstance(results, dict) and results.get("checkpoint") == str(checkpoint_path.resolve())
    return results if scored else None


def model_card(meta: dict[str, Any], state: dict[str, torch.Tensor], results: dict | None) -> str:
    """The folder's README.md: what the head is and needs, what it was trained on, and its results."""
    config, lmm, sam, trained = meta["config"], meta["lmm"], meta["sam"], meta["trained"]
    model, data, train = config["model"], config["data"], config["train"]
    identity = lmm["identity"]
    parts = ["the U-Net mask head"]
    if model.get("refiner"):
        parts.append("the SAM refiner's prompt encoder, mask decoder and language projection")
    if model.get("selector"):
        parts.append("the keyword selector")
    revision = f" at revision `{lmm['revision']}`" if lmm.get("revision") else ""
    fingerprint = f", weights fingerprint `{lmm['fingerprint']}`" if lmm.get("fingerprint") else ""
    if sam is None:
        sam_line = "none (the head's coarse masks are its output)"
    elif sam["checkpoint"] is None:
        sam_line = f"`{sam['model_type']}` at its random initial weights"
    else:
        sam_line = f"`{sam['model_type']}`, `{sam['checkpoint']}` (sha256 `{sam['sha256']}`)"
    if results is None:
        evaluation = f"Not evaluated: its run holds no tools/test.py results of it (RUN/eval/{RESULTS_FILE})."
    else:
        evaluation = f"tools/test.py ({RESULTS_FILE}):\n\n{format_results_table(results['splits'])}"
    synthetic = " (the synthetic world)" if data.get("synthetic") else ""
    val_splits = ", ".join(data["val_splits"]) or "-"
    refined = ", refined by SAM" if model.get("refiner") else ""
    lines = [
        f"# flmm grounding head for `{model['lmm']['model']}`",
        "",
        "Pixel grounding for a frozen multimodal LLM in the style of F-LMM: the attention of a phrase's "
        "tokens to the image, in every layer and head, goes through a trainable U-Net to mask logits"
        f"{refined}. "
        f"`{WEIGHTS_FILE}` holds only the trained parts ({len(state)} tensors, "
        f"{sum(t.numel() for t in state.values()):,} values): {', '.join(parts)}. The LMM and SAM's image "
        "encoder stay frozen and load from their own weights.",
        "",
        "## Use",
        "",
        "```python",
        "from flmm import Grounder",
        'grounder = Grounder.from_pretrained("THIS_FOLDER_OR_HUB_ID")',
        'masks = grounder.ground("image.jpg", ["the red circle"])  # one (H, W) bool array per phrase',
        "```",
        "",
        "tools/demo.py and tools/test.py take the folder as `--ckpt`; `key=value` arguments override the "
        "paths of the weights (`model.lmm.model=...`, `model.refiner.checkpoint=...`).",
        "",
        "## Needs",
        "",
        f"- LMM: `{model['lmm']['model']}`{revision} ({identity['adapter']}, {identity['num_layers']} "
        f"layers x {identity['num_heads']} heads{fingerprint})",
        f"- SAM: {sam_line}",
        f"- flmm {meta['flmm_version']} (head folder format {meta['format_version']})",
        "",
        "## Training",
        "",
        f"- data: {', '.join(data['train_splits'])}{synthetic}; validated on {val_splits}",
        f"- {trained['global_step']} optimizer steps (checkpoint epoch {trained['epoch']}), batch "
        f"{data['batch_size']}, lr {train['lr']}, precision {train['precision']}, seed {config['seed']}",
        f"- checkpoint: `{trained['checkpoint']}`",
        "",
        "## Results",
        "",
        evaluation,
        "",
    ]
    return "\n".join(lines)


def resolve_head(name_or_path: str | Path) -> Path | None:
    """The head folder `name_or_path` names: a local folder, or a hub repository `owner/name` (when no such
    local path exists) fetched into the Hugging Face cache; None for anything else (a checkpoint file, or a
    missing path, which the checkpoint reader reports).

    Offline (HF_HUB_OFFLINE=1) a hub repository is looked up in the cache only.
    """
    path, name = Path(name_or_path), str(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or path.suffix == ".ckpt" or not _HUB_REPO.fullmatch(name):
        return None
    try:
        return Path(snapshot_download(name, local_files_only=is_offline_mode()))
    except Exception as exc:  # huggingface_hub raises HTTP, offline, cache and connection errors alike
        offline = " (downloads are off: HF_HUB_OFFLINE=1)" if is_offline_mode() else ""
        raise FlmmError(
            f"{name}: no such file or folder here, and fetching it as a Hugging Face hub repository failed"
            f"{offline}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Download it "
            f"once where the hub is reachable (`hf download {name} --local-dir DIR`) and pass DIR"
        ) from None


def load_head_folder(folder: str | Path) -> tuple[DictConfig, dict[str, torch.Tensor]]:
    """config.json of a head folder (format checked; its `config` is the run's config) and its weights
    (name -> tensor, checked against config.json's sha256). FlmmError / ConfigError naming the file."""
    folder = Path(folder)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise FlmmError(
            f"{folder}: not a head folder, {' and '.join(missing)} missing (tools/export_head.py writes "
            f"{WEIGHTS_FILE}, {CONFIG_FILE} and {CARD_FILE})"
        )
    meta = _read_meta(folder / CONFIG_FILE)
    weights = folder / WEIGHTS_FILE
    found = file_sha256(weights)
    if found != meta.weights_sha256:
        raise FlmmError(
            f"{weights} is not the file {CONFIG_FILE} was written with (sha256 {found[:16]}..., recorded "
            f"{meta.weights_sha256[:16]}...): the folder is damaged or mixes two exports; export it again"
        )
    return meta, load_file(weights)


def _read_meta(path: Path) -> DictConfig:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{path}: format_version {meta.get('format_version')!r}; this flmm ({flmm_version()}) reads head "
            f"folders of format_version {FORMAT_VERSION}: export the checkpoint again with it"
        )
    wrong = [
        f"{key} (expected {' or '.join(t.__name__ for t in types)})"
        for key, types in FIELDS.items()
        if key not in meta or not isinstance(meta[key], types)
    ]
    if isinstance(meta.get("lmm"), dict) and not isinstance(meta["lmm"].get("identity"), dict):
        wrong.append("lmm.identity (expected dict)")
    if wrong:
        raise ConfigError(f"{path}: missing or malformed fields: {', '.join(wrong)}")
    return OmegaConf.create(meta)


def folder_checkpoint(folder: Path) -> dict[str, Any]:
    """A head folder as the fields of a tools/train.py checkpoint that evaluation and the demo read:
    `state_dict`, `hyper_parameters.config`, `flmm_identity`, `flmm_lmm_source` (None when the weights were
    not recorded) and `flmm_sam` (`check_same_sam`)."""
    meta, state = load_head_folder(folder)
    lmm = OmegaConf.to_container(meta.lmm)
    identity = lmm.pop("identity")
    return {
        "state_dict": state,
        "hyper_parameters": {"config": OmegaConf.to_container(meta.config)},
        "flmm_identity": identity,
        "flmm_lmm_source": lmm if lmm.get("fingerprint") else None,
        "flmm_sam": OmegaConf.to_container(meta.sam) if meta.sam is not None else None,
    }


def check_same_sam(cfg: DictConfig, recorded: dict[str, str | None] | None) -> None:
    """ConfigError when the SAM checkpoint configured now is not the file a head was trained with (its
    sha256): SAM's frozen image encoder makes what the trained mask decoder reads. Nothing to compare for a
    training checkpoint (which records none), a SAM without a file, or a file that is missing (reported by
    the preflight)."""
    checkpoint = None if cfg.model.refiner is None else cfg.model.refiner.get("checkpoint")
    if not recorded or not recorded.get("sha256") or not checkpoint:
        return
    path = Path(str(checkpoint))
    if path.is_file() and file_sha256(path) != recorded["sha256"]:
        raise ConfigError(
            f"model.refiner.checkpoint={path} is not the SAM checkpoint this head was trained with "
            f"({recorded['checkpoint']}, sha256 {recorded['sha256'][:16]}...); point "
            "model.refiner.checkpoint at that file"
        )
