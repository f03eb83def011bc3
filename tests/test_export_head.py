"""Trained heads as folders (`flmm.hub`, tools/export_head.py) and `flmm.Grounder` on them.

The session's 3-step toy run (`smoke_run`), exported once; the folder must load, ground, answer and
evaluate exactly as its checkpoint does, without unpickling anything.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import is_offline_mode
from PIL import Image
from safetensors.torch import load_file, save_file

from flmm import Grounder
from flmm.data.image_io import load_rgb
from flmm.demo.answer import GenerationSettings
from flmm.demo.pipeline import Demo
from flmm.engine.metrics import format_results_table
from flmm.engine.module import FROZEN_PREFIXES
from flmm.errors import ConfigError, FlmmError
from flmm.hub import export_head
from flmm.lmm.loading import folder_fingerprint
from flmm.models.sam_build import build_sam, save_sam_checkpoint
from tests.conftest import REPO_ROOT, ToyWorld, load_checkpoint, load_tool, wide_image

PHRASES = ["the red circle", "a blue square"]
QUESTION = "What is the red circle?"
QUIET = ["data.num_workers=0", "train.progress_bar=false"]
EVAL = ["--splits", "refcoco:val", "--protocol", "all-sentences", "--overlays", "0"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoint(smoke_run: Path) -> Path:
    """The session's 3-step toy run (never evaluated into its own folder)."""
    return smoke_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def head(checkpoint: Path, tmp_path_factory) -> Path:
    """The run's head folder, written by tools/export_head.py."""
    out = tmp_path_factory.mktemp("export") / "head"
    assert load_tool("export_head").main(["--ckpt", str(checkpoint), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def image(toy_world: ToyWorld, tmp_path_factory) -> Path:
    return wide_image(toy_world, tmp_path_factory.mktemp("export_image"))


@pytest.fixture(scope="module")
def grounder(head: Path) -> Grounder:
    return Grounder.from_pretrained(head, device="cpu")


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Demo:
    """The same head loaded the checkpoint's way."""
    return Demo.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def checkpoint_results(checkpoint: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eval_checkpoint")
    assert load_tool("test").main(["--ckpt", str(checkpoint), *EVAL, "--out", str(out), *QUIET]) == 0
    return json.loads((out / "results.json").read_text())


def _copy(head: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(head, tmp_path / "head"))


def test_the_folder_holds_the_trainable_weights_only(head: Path, checkpoint: Path):
    assert sorted(p.name for p in head.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    weights, trained = load_file(head / "model.safetensors"), load_checkpoint(checkpoint)["state_dict"]
    assert weights.keys() == trained.keys()
    assert all(torch.equal(weights[k], trained[k]) for k in trained)
    assert not [k for k in weights if k.startswith(FROZEN_PREFIXES)]  # no LMM, no SAM image encoder
    assert any(k.startswith("model.mask_head.") for k in weights)
    assert any(k.startswith("model.refiner.sam.mask_decoder.") for k in weights)
    assert "optimizer" not in (head / "config.json").read_text()


BAD_EXPORTS = {
    "no-checkpoint": (lambda ckpt, tmp: ["--ckpt", str(tmp / "none.ckpt")], "checkpoint not found"),
    "no-sam-file": (
        lambda ckpt, tmp: ["--ckpt", str(ckpt), f"model.refiner.checkpoint={tmp / 'none.safetensors'}"],
        r"model\.refiner\.checkpoint=.*none\.safetensors not found: the export records the sha256",
    ),
}


@pytest.mark.parametrize("case", BAD_EXPORTS)
def test_export_of_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, case):
    argv, message = BAD_EXPORTS[case]
    assert load_tool("export_head").main([*argv(checkpoint, tmp_path), "--out", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert re.match(rf"error: .*{message}", err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h").exists()


def test_config_json_records_the_head_and_the_weights_it_needs(head: Path, toy_world: ToyWorld):
    meta = json.loads((head / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["flmm_version"] == version("flmm")
    assert meta["lmm"] == {
        "model": str(toy_world.lmm),
        "revision": None,
        "fingerprint": folder_fingerprint(toy_world.lmm),
        "identity": {
            "adapter": "LlavaAdapter",
            "num_layers": 2,
            "num_heads": 2,
            "attention_channels": 4,
            "hidden_size": 32,
        },
    }
    assert meta["sam"] == {
        "model_type": "tiny",
        "checkpoint": "sam.safetensors",
        "sha256": _sha256(toy_world.sam),
    }
    assert meta["weights_sha256"] == _sha256(head / "model.safetensors")
    model = meta["config"]["model"]
    assert model["mask_head"] == {"type": "UNetMaskHead", "channels": [8, 16, 32, 64], "size": 32}
    assert model["refiner"]["checkpoint"] == str(toy_world.sam)
    assert model["selector"] == {"type": "KeywordSelector", "width": 128}  # the embedded default trains one
    assert meta["trained"]["global_step"] == 3


def test_shipped_toy_models_are_recorded_wherever_flmm_is_installed(checkpoint: Path, tmp_path: Path):
    overrides = [
        f"model.lmm.model={REPO_ROOT / 'toy_models' / 'tiny_llava'}",
        f"model.refiner.checkpoint={REPO_ROOT / 'toy_models' / 'tiny_sam.safetensors'}",
    ]
    model = json.loads((export_head(checkpoint, tmp_path / "h", overrides) / "config.json").read_text())
    assert model["config"]["model"]["lmm"]["model"] == "${shipped:toy_models/tiny_llava}"
    assert model["config"]["model"]["refiner"]["checkpoint"] == "${shipped:toy_models/tiny_sam.safetensors}"


def test_model_card_of_an_unevaluated_run_says_so(head: Path, toy_world: ToyWorld):
    card = (head / "README.md").read_text()
    assert "Not evaluated" in card
    assert f"`{toy_world.lmm}`" in card and _sha256(toy_world.sam) in card
    assert 'Grounder.from_pretrained("THIS_FOLDER_OR_HUB_ID")' in card


def _run_copy(checkpoint: Path, tmp_path: Path, results: dict, scored: str | None = None) -> Path:
    """A copy of the run's checkpoint in RUN/checkpoints/ with `results` in RUN/eval/results.json, scoring
    `scored` (default: the copy)."""
    copy = tmp_path / "run" / "checkpoints" / "last.ckpt"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(checkpoint, copy)
    (tmp_path / "run" / "eval").mkdir()
    recorded = {**results, "checkpoint": scored or str(copy.resolve())}
    (tmp_path / "run" / "eval" / "results.json").write_text(json.dumps(recorded))
    return copy


def test_model_card_holds_the_runs_results_of_that_checkpoint(checkpoint, checkpoint_results, tmp_path):
    out = export_head(_run_copy(checkpoint, tmp_path, checkpoint_results), tmp_path / "head")
    assert format_results_table(checkpoint_results["splits"]) in (out / "README.md").read_text()
    assert json.loads((out / "results.json").read_text())["splits"] == checkpoint_results["splits"]


def test_results_of_another_checkpoint_are_not_reported(checkpoint, checkpoint_results, tmp_path):
    copy = _run_copy(checkpoint, tmp_path, checkpoint_results, scored=str(tmp_path / "other.ckpt"))
    out = export_head(copy, tmp_path / "head")
    assert "Not evaluated" in (out / "README.md").read_text() and not (out / "results.json").exists()


def test_grounder_masks_are_the_checkpoints(grounder: Grounder, reference: Demo, image: Path):
    masks = grounder.ground(image, PHRASES)
    expected = [p.mask for p in reference.run(load_rgb(image), phrases=PHRASES).phrases]
    assert [(m.shape, m.dtype) for m in masks] == [((40, 64), np.dtype(bool))] * len(PHRASES)
    assert all(np.array_equal(m, e) for m, e in zip(masks, expected, strict=True))
    mine, theirs = grounder.demo.head.state_dict(), reference.head.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_ground_takes_a_path_a_pil_image_or_an_array(grounder: Grounder, image: Path):
    rgb = load_rgb(image)
    by_kind = [grounder.ground(i, PHRASES[0]) for i in (str(image), Image.open(image), rgb)]
    assert all(len(masks) == 1 and np.array_equal(masks[0], by_kind[0][0]) for masks in by_kind)
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 array, got float32"):
        grounder.ground(rgb.astype(np.float32), PHRASES)


def test_ask_answers_and_grounds_the_answer(grounder: Grounder, reference: Demo, image: Path):
    result = grounder.ask(image, QUESTION, source="answer", max_new_tokens=5)
    expected = reference.run(load_rgb(image), QUESTION, settings=GenerationSettings(5), source="answer")
    assert result.answer and result.answer == expected.answer
    [phrase] = result.phrases  # the whole answer
    assert phrase.text == result.answer and phrase.mask.shape == (40, 64)
    assert np.array_equal(phrase.mask, expected.phrases[0].mask)


def test_readme_python_use_runs_as_written(head: Path, image: Path):
    section = (REPO_ROOT / "README.md").read_text().split("### Sharing a trained head", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    assert len([line for line in code.splitlines() if line.strip()]) == 3
    code = code.replace('"runs/flmm_toy/head"', repr(str(head)))
    scope: dict = {}
    exec(re.sub(r'"data/synthetic/[^"]+\.jpg"', repr(str(image)), code), scope)
    assert [m.shape for m in scope["masks"]] == [(40, 64)]


def test_tools_test_scores_a_folder_as_its_checkpoint(head: Path, checkpoint_results: dict, tmp_path: Path):
    assert load_tool("test").main(["--ckpt", str(head), *EVAL, "--out", str(tmp_path), *QUIET]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["splits"] == checkpoint_results["splits"]
    assert results["config_hash"] == checkpoint_results["config_hash"]


def test_tools_demo_takes_a_folder(head: Path, image: Path, tmp_path: Path):
    argv = ["--ckpt", str(head), "--image", str(image), "--phrases", "; ".join(PHRASES)]
    assert load_tool("demo").main([*argv, "--out", str(tmp_path)]) == 0
    assert [p["text"] for p in json.loads((tmp_path / "result.json").read_text())["phrases"]] == PHRASES


def test_loading_a_folder_never_unpickles(head: Path, checkpoint: Path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    assert Grounder.from_pretrained(head, device="cpu").ground is not None
    # The same patch does stop a checkpoint, which is a pickle.
    with pytest.raises(FlmmError, match=r"not a readable checkpoint.*unpickling"):
        Grounder.from_pretrained(checkpoint, device="cpu")


@pytest.mark.parametrize("missing", ["model.safetensors", "config.json"])
def test_a_missing_file_is_named(head: Path, tmp_path: Path, missing: str):
    folder = _copy(head, tmp_path)
    (folder / missing).unlink()
    message = rf"{re.escape(str(folder))}: not a head folder, {re.escape(missing)} missing"
    with pytest.raises(FlmmError, match=message):
        Grounder.from_pretrained(folder)


def test_damaged_weights_are_refused(head: Path, tmp_path: Path):
    folder = _copy(head, tmp_path)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(FlmmError, match=r"model\.safetensors is not the file config\.json was written with"):
        Grounder.from_pretrained(folder)


BAD_CONFIGS = {
    "not-json": (lambda meta: "{not json", r"not valid JSON"),
    "other-format": (
        lambda meta: json.dumps({**meta, "format_version": 2}),
        r"format_version 2; this flmm \(.*\) reads head folders of format_version 1",
    ),
    "no-lmm": (
        lambda meta: json.dumps({k: v for k, v in meta.items() if k != "lmm"}),
        r"missing or malformed fields: lmm \(expected dict\)",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_bad_config_json_is_a_config_error_naming_it(head: Path, tmp_path: Path, case: str):
    folder = _copy(head, tmp_path)
    write, message = BAD_CONFIGS[case]
    path = folder / "config.json"
    path.write_text(write(json.loads(path.read_text())))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: {message}"):
        Grounder.from_pretrained(folder)


def test_weights_that_do_not_fit_the_config_are_refused(head: Path, tmp_path: Path):
    folder = _copy(head, tmp_path)
    path = folder / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["model"]["mask_head"]["channels"] = [8, 16, 32, 32]
    path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"does not fit this model: .*different shapes \['model\.mask_head"):
        Grounder.from_pretrained(folder, device="cpu")


def test_another_sam_file_is_refused(head: Path, toy_world: ToyWorld, tmp_path: Path):
    other = tmp_path / "sam.safetensors"
    state = load_file(toy_world.sam)
    state["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"] + 1
    save_file(state, other)
    with pytest.raises(ConfigError, match=r"not the SAM checkpoint this head was trained with \(sam\.safe"):
        Grounder.from_pretrained(head, overrides=[f"model.refiner.checkpoint={other}"])


def test_an_uncached_hub_repository_offline_is_one_clear_error():
    assert is_offline_mode()  # set by conftest: nothing here may reach the network
    with pytest.raises(FlmmError, match=r"nobody/no-such-head: no such file or folder here, and fetching it"):
        Grounder.from_pretrained("nobody/no-such-head")


def test_a_safetensors_sam_loads_the_tensors_a_pth_of_it_holds(tmp_path: Path):
    state = build_sam("tiny").state_dict()
    for name in ("sam.safetensors", "sam.pth"):
        save_sam_checkpoint(state, tmp_path / name)
    loaded = [build_sam("tiny", str(tmp_path / name)).state_dict() for name in ("sam.safetensors", "sam.pth")]
    assert all(torch.equal(loaded[0][k], v) and torch.equal(loaded[1][k], v) for k, v in state.items())
    assert load_file(tmp_path / "sam.safetensors").keys() == state.keys()  # written as safetensors


def test_an_unreadable_safetensors_sam_is_a_config_error_naming_it(tmp_path: Path):
    path = tmp_path / "sam.safetensors"
    path.write_bytes(b"PK\x03\x04 this is no checkpoint")
    with pytest.raises(ConfigError, match=rf"={re.escape(str(path))} is not a readable safetensors file"):
        build_sam("tiny", str(path))


def test_import_flmm_stays_light_and_grounder_comes_on_first_use():
    probe = "import sys, flmm; print(sorted(m for m in ('torch', 'flmm.grounder') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]
    import flmm
    import flmm.grounder

    assert flmm.Grounder is flmm.grounder.Grounder
