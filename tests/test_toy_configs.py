"""The embedded default and its control: same everything but the frozen LMM's weights; shipped toy models
are what their recipes make and are only loaded by the tools (the toy tools build them); the grounding
probe runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from flmm.config import load_config
from flmm.data.synthetic import SyntheticConfig, generate_world
from flmm.lmm.tiny import build_tiny_llava
from flmm.toy.captions import chat_corpus, corpus
from flmm.toy.pretrain_lmm import INIT_REPORT_FILE, REPORT_FILE, extend_vocabulary
from flmm.toy.pretrain_sam import report_path
from flmm.toy.recipe import LmmRecipe, SamRecipe, load_recipe
from tests.conftest import REPO_ROOT, load_tool

DEFAULT = REPO_ROOT / "configs" / "flmm_toy.yaml"
CONTROL = REPO_ROOT / "configs" / "flmm_toy_control.yaml"
# The README's overrides that give the default the control's recipe: RefCOCO only, no keyword selector.
REFCOCO_ONLY = [
    "data.train_splits=[refcoco:train]",
    "data.val_splits=[refcoco:val]",
    "data.test_splits=[refcoco:val,refcoco:testA,refcoco:testB]",
    "model.selector=null",
]
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "processor_config.json")
TINY_SIZES = [
    "sizes.vision.image_size=32",
    "sizes.vision.hidden_size=32",
    "sizes.vision.intermediate_size=64",
    "sizes.text.hidden_size=32",
    "sizes.text.intermediate_size=64",
    "sizes.text.num_hidden_layers=2",
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


def test_control_config_is_the_defaults_refcoco_recipe_but_for_the_lmm_weights():
    default, control = _flat(load_config(DEFAULT, REFCOCO_ONLY)), _flat(load_config(CONTROL))
    differing = {k for k in default.keys() | control.keys() if default.get(k) != control.get(k)}
    assert differing == {"output_dir", "model.lmm.model"}


def _processor_behaviour(folder: Path) -> dict:
    """What a toy LLaVA folder's processor does: its vocabulary, added tokens, the ids it gives every toy
    text, and its image processor's settings."""
    processor = LlavaProcessor.from_pretrained(folder, local_files_only=True)
    tokenizer = processor.tokenizer
    return {
        "vocab": tokenizer.get_vocab(),
        "added": {i: str(token) for i, token in tokenizer.added_tokens_decoder.items()},
        "ids": [tokenizer(text).input_ids for text in corpus() + chat_corpus()],
        "image": processor.image_processor.to_dict(),
    }


def test_control_and_default_models_share_architecture_and_tokenizer(tmp_path: Path):
    shrunk = ["scenes=16", "eval_scenes=4", "batch_size=4", "world.size=64", *TINY_SIZES]
    folders = {"default": tmp_path / "default", "control": tmp_path / "control"}
    for name, steps in (("default", 2), ("control", 0)):
        argv = ["--out", str(folders[name]), "--steps", str(steps), "--quiet", *shrunk]
        assert load_tool("pretrain_toy_lmm").main(argv) == 0
    for file in PROCESSOR_FILES:
        assert (folders["default"] / file).read_bytes() == (folders["control"] / file).read_bytes(), file
    assert _architecture(folders["default"]) == _architecture(folders["control"])
    trained, initial = (load_file(folders[n] / "model.safetensors") for n in ("default", "control"))
    assert trained.keys() == initial.keys()
    assert any(not trained[k].equal(initial[k]) for k in trained)


def test_shipped_toy_models_are_what_their_recipes_make(tmp_path: Path):
    cfg = load_config(DEFAULT)
    lmm, sam = Path(cfg.model.lmm.model), Path(cfg.model.refiner.checkpoint)
    assert lmm.parent == sam.parent == REPO_ROOT / "toy_models"
    lmm_recipe = load_recipe(LmmRecipe, REPO_ROOT / "configs" / "toy_lmm.yaml")
    chat_recipe = load_recipe(LmmRecipe, REPO_ROOT / "configs" / "toy_lmm_chat.yaml")
    sam_recipe = load_recipe(SamRecipe, REPO_ROOT / "configs" / "toy_sam.yaml")
    # Two stages: captions (toy_lmm.yaml), then questions and narratives from there (toy_lmm_chat.yaml).
    # The first stage's report predates the recipe key `init` (None: it built its model).
    assert {"init": None, **json.loads((lmm / INIT_REPORT_FILE).read_text())["recipe"]} == vars(lmm_recipe)
    assert json.loads((lmm / REPORT_FILE).read_text())["recipe"] == vars(chat_recipe)
    assert json.loads(report_path(sam).read_text())["recipe"] == vars(sam_recipe)
    built = build_tiny_llava(
        tmp_path / "built", seed=lmm_recipe.seed, config=lmm_recipe.sizes, corpus=corpus()
    )
    model = LlavaForConditionalGeneration.from_pretrained(built, local_files_only=True)
    processor = LlavaProcessor.from_pretrained(built, local_files_only=True)
    extend_vocabulary(model, processor.tokenizer, chat_corpus(), chat_recipe.seed)
    fresh = tmp_path / "fresh"
    processor.save_pretrained(fresh)
    model.save_pretrained(fresh)
    # What the files mean, not their bytes: the shipped ones were written by the transformers of their day.
    assert _processor_behaviour(lmm) == _processor_behaviour(fresh)
    assert _architecture(lmm) == _architecture(fresh)
    shipped = [p for p in lmm.parent.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in shipped) <= 10 * 2**20


def test_a_missing_toy_model_stops_the_run_with_the_command_that_builds_it(tmp_path: Path, capsys):
    missing = tmp_path / "toy_models" / "tiny_llava_random"
    argv = [str(CONTROL), f"model.lmm.model={missing}", f"output_dir={tmp_path / 'run'}"]
    assert load_tool("train").main(argv) == 2
    err = capsys.readouterr().err
    assert f"python tools/pretrain_toy_lmm.py --out {missing}" in err and "--steps 0" in err
    assert not missing.exists() and not (tmp_path / "toy_models").exists()


def test_a_missing_shipped_llava_names_both_of_its_pretraining_stages(tmp_path: Path, capsys):
    missing = tmp_path / "toy_models" / "tiny_llava"
    argv = [str(DEFAULT), f"model.lmm.model={missing}", f"output_dir={tmp_path / 'run'}"]
    assert load_tool("train").main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    init = load_recipe(LmmRecipe, REPO_ROOT / "configs" / "toy_lmm_chat.yaml").init
    assert f"`python tools/pretrain_toy_lmm.py --out {init}` then" in err
    assert f"`python tools/pretrain_toy_lmm.py --config configs/toy_lmm_chat.yaml --out {missing}`" in err


def test_production_modules_never_import_the_toy_builders():
    """Training, evaluation, the demo and the library they use only load model folders: the toy-model
    builders (`flmm.toy`) are the toy tools' alone, and a real config never imports the synthetic world's
    generator (`flmm.data.synthetic*`; the guard `synthetic_setup` only imports it for a toy config)."""
    probe = (
        "import importlib.util, sys\n"
        "for name in ('train', 'test', 'demo', 'browse_data', 'export_head'):\n"
        "    path = f'tools/{name}.py'\n"
        "    spec = importlib.util.spec_from_file_location(f'tool_{name}', path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "import flmm.engine.attend, flmm.engine.evaluate, flmm.demo.pipeline, flmm.benchmark.train\n"
        "from flmm.config import load_config\n"
        "load_config('configs/flmm_llava7b.yaml')\n"
        "toy = ('flmm.toy', 'flmm.data.synthetic')\n"
        "print(sorted(m for m in sys.modules if m.startswith(toy) and m != 'flmm.data.synthetic_setup'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


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
