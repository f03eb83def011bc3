"""The embedded default and its control: same everything but the frozen LMM's weights; shipped toy models
are what their recipes make; the grounding probe runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

from flmm.config import load_config
from flmm.data.synthetic import SyntheticConfig, generate_world
from flmm.engine.toy import ensure_toy_models, toy_lmm_recipe, toy_sam_recipe
from flmm.errors import ConfigError
from flmm.lmm.tiny import build_tiny_llava
from flmm.toy.captions import corpus
from flmm.toy.pretrain_lmm import REPORT_FILE
from tests.conftest import REPO_ROOT, load_tool

DEFAULT = REPO_ROOT / "configs" / "flmm_toy.yaml"
CONTROL = REPO_ROOT / "configs" / "flmm_toy_control.yaml"
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "processor_config.json")
TINY_SIZES = [
    "model.toy.lmm_sizes.vision.image_size=32",
    "model.toy.lmm_sizes.vision.hidden_size=32",
    "model.toy.lmm_sizes.vision.intermediate_size=64",
    "model.toy.lmm_sizes.text.hidden_size=32",
    "model.toy.lmm_sizes.text.intermediate_size=64",
    "model.toy.lmm_sizes.text.num_hidden_layers=2",
]


# Written by save_pretrained but no part of the architecture: the dtype after training, and the
# transformers release that wrote the file (a fresh install of another patch release must still match).
NOT_ARCHITECTURE = {"dtype", "transformers_version"}


def _architecture(folder: Path) -> dict:
    """config.json without the entries of `NOT_ARCHITECTURE`, at any depth."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in NOT_ARCHITECTURE}
        return node

    return strip(json.loads((folder / "config.json").read_text()))


def _flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def test_control_config_differs_from_the_default_only_in_the_lmm_weights():
    default, control = _flat(load_config(DEFAULT)), _flat(load_config(CONTROL))
    differing = {k for k in default.keys() | control.keys() if default.get(k) != control.get(k)}
    assert differing == {"output_dir", "model.lmm.model", "model.toy.pretrain_steps"}
    assert control["model.toy.pretrain_steps"] == 0


def test_control_and_default_models_share_architecture_and_tokenizer(tmp_path: Path):
    recipe = tmp_path / "recipe.yaml"
    shrunk = OmegaConf.load(REPO_ROOT / "configs" / "toy_lmm.yaml")
    shrunk.merge_with({"scenes": 16, "eval_scenes": 4, "batch_size": 4, "world": {"size": 64}})
    OmegaConf.save(shrunk, recipe)
    folders = {}
    for name, path, steps in (("default", DEFAULT, 2), ("control", CONTROL, None)):
        overrides = [f"model.lmm.model={tmp_path / name}", f"model.toy.lmm_recipe={recipe}", *TINY_SIZES]
        overrides += ["model.refiner=null", "train.progress_bar=false"]
        cfg = load_config(path, [*overrides, *([f"model.toy.pretrain_steps={steps}"] if steps else [])])
        ensure_toy_models(cfg)
        folders[name] = tmp_path / name
    for file in PROCESSOR_FILES:
        assert (folders["default"] / file).read_bytes() == (folders["control"] / file).read_bytes(), file
    assert _architecture(folders["default"]) == _architecture(folders["control"])
    trained, initial = (load_file(folders[n] / "model.safetensors") for n in ("default", "control"))
    assert trained.keys() == initial.keys()
    assert any(not trained[k].equal(initial[k]) for k in trained)


def test_shipped_toy_models_are_what_their_recipes_make(tmp_path: Path):
    cfg = load_config(DEFAULT)
    lmm, sam = Path(cfg.model.lmm.model), Path(cfg.model.refiner.checkpoint)
    assert not str(lmm).startswith("data/") and not str(sam).startswith("data/")
    lmm_recipe, sam_recipe = toy_lmm_recipe(cfg.model.toy), toy_sam_recipe(cfg.model.toy)
    assert json.loads((REPO_ROOT / lmm / REPORT_FILE).read_text())["recipe"] == vars(lmm_recipe)
    assert json.loads((REPO_ROOT / sam).with_suffix(".pth.json").read_text())["recipe"] == vars(sam_recipe)
    fresh = build_tiny_llava(tmp_path, seed=lmm_recipe.seed, config=lmm_recipe.sizes, corpus=corpus())
    for file in PROCESSOR_FILES:
        assert (REPO_ROOT / lmm / file).read_bytes() == (fresh / file).read_bytes(), file
    assert _architecture(REPO_ROOT / lmm) == _architecture(fresh)
    shipped = [p for p in (REPO_ROOT / lmm.parent).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in shipped) <= 10 * 2**20


def _toy_paths(toy_models: Path) -> list[str]:
    """Overrides pointing the default at the toy models under `toy_models`, recipes by absolute path."""
    return [
        f"model.lmm.model={toy_models / 'tiny_llava'}",
        f"model.refiner.checkpoint={toy_models / 'tiny_sam.pth'}",
        f"model.toy.lmm_recipe={REPO_ROOT / 'configs' / 'toy_lmm.yaml'}",
        f"model.toy.sam_recipe={REPO_ROOT / 'configs' / 'toy_sam.yaml'}",
        "train.progress_bar=false",
    ]


def test_shipped_toy_models_pass_the_recipe_check_without_rebuilding():
    toy_models = REPO_ROOT / "toy_models"
    files = [toy_models / "tiny_llava" / "model.safetensors", toy_models / "tiny_sam.pth"]
    before = [f.stat().st_mtime_ns for f in files]
    ensure_toy_models(load_config(DEFAULT, _toy_paths(toy_models)))
    assert [f.stat().st_mtime_ns for f in files] == before


@pytest.mark.parametrize(
    ("override", "model", "differing"),
    [
        ("model.toy.seed=1", "tiny_llava", "seed"),
        ("model.toy.lmm_sizes.text.num_attention_heads=4", "tiny_llava", "sizes"),
        ("model.toy.sam_pretrain_steps=7", "tiny_sam.pth", "steps"),
    ],
)
def test_a_toy_model_built_by_another_recipe_is_refused_and_kept(tmp_path, override, model, differing):
    toy_models = shutil.copytree(REPO_ROOT / "toy_models", tmp_path / "toy_models")
    with pytest.raises(ConfigError, match=rf"{model} was built by another recipe.*differing: {differing}\b"):
        ensure_toy_models(load_config(DEFAULT, [*_toy_paths(toy_models), override]))
    assert (toy_models / model).exists()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe_world")
    generate_world(root, SyntheticConfig(seed=0, n_res_images=20, n_png_images=10, size=64, max_objects=3))
    return root


def test_probe_reports_pointing_against_chance(world: Path, tmp_path: Path, capsys):
    lmm = build_tiny_llava(tmp_path / "llava", config={"text": {"num_hidden_layers": 2}}, corpus=corpus())
    out = tmp_path / "probe.json"
    argv = ["--lmm", str(lmm), "--config", str(DEFAULT), "--quiet", "--out", str(out)]
    assert load_tool("probe_grounding").main([*argv, f"data.root={world}", "data.synthetic=null"]) == 0
    results = json.loads(out.read_text())
    assert results["n"] > 0 and 0 <= results["pointing"] <= 1 and 0 < results["chance"] < 1
    assert len(results["by_layer"]) == 2
    assert sum(v["n"] for v in results["by_kind"].values()) == results["n"]
    assert "pointing" in capsys.readouterr().out
