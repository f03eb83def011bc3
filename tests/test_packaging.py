"""An installed flmm runs from any folder: console scripts, its configs and the embedded default's toy models
come with the package (`pip install .`), and configs find shipped files wherever the working directory is."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flmm.config import load_config
from flmm.errors import ConfigError
from flmm.shipped import find_config, shipped_path
from tests.conftest import REPO_ROOT

SOURCE_FILES = ("pyproject.toml", "requirements.txt", "README.md", "flmm", "tools", "configs", "toy_models")


def test_a_shipped_config_is_found_from_any_folder(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("configs/flmm_toy.yaml") == REPO_ROOT / "configs" / "flmm_toy.yaml"
    assert find_config("flmm_toy") == REPO_ROOT / "configs" / "flmm_toy.yaml"
    cfg = load_config("configs/flmm_toy.yaml")
    assert Path(cfg.model.lmm.model) == REPO_ROOT / "toy_models" / "tiny_llava"
    assert Path(cfg.output_dir) == Path("runs/flmm_toy")  # outputs stay where the user runs it


def test_a_local_file_wins_over_a_shipped_config_of_the_same_name(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "flmm_toy.yaml").write_text("seed: 7\n")
    assert find_config("configs/flmm_toy.yaml") == Path("configs/flmm_toy.yaml")
    assert load_config("configs/flmm_toy.yaml").seed == 7


@pytest.mark.parametrize("relative", ["../secrets", "/etc/passwd", "data/synthetic", "toy_models/../../x"])
def test_shipped_refuses_paths_outside_the_shipped_folders(relative: str):
    with pytest.raises(ConfigError, match="shipped folders"):
        shipped_path(relative)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install .` (no dependencies: they are this environment's) into a scratch prefix, from a copy of
    the source files (pip's build folder must not land in the checkout)."""
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("installed")
    for name in SOURCE_FILES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO_ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def _run_installed(installed: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _entry_points(installed: Path) -> dict[str, str]:
    (dist,) = metadata.distributions(path=[str(installed)])
    return {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}


def test_the_installed_package_holds_every_module_of_the_source_tree(installed: Path):
    sources = [p.relative_to(REPO_ROOT) for p in (REPO_ROOT / "flmm").rglob("*.py")]
    assert sources and [p for p in sources if not (installed / p).is_file()] == []
    tools = [p.name for p in (REPO_ROOT / "tools").glob("*.py")]
    assert [t for t in tools if not (installed / "flmm_tools" / t).is_file()] == []


def test_every_console_script_is_a_tool_with_a_main(installed: Path):
    scripts = _entry_points(installed)
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    listed = readme.split("gives console scripts with the tools' arguments:", 1)[1].split(". ", 1)[0]
    assert set(scripts) == set(re.findall(r"`(flmm-[a-z-]+)`", listed))  # the README names them all
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert module.startswith("flmm_tools.") and function == "main", name
        assert (REPO_ROOT / "tools" / f"{module.removeprefix('flmm_tools.')}.py").is_file(), name
        assert (installed / "bin" / name).is_file(), name


def test_an_installed_flmm_carries_its_configs_and_toy_models(installed: Path, tmp_path: Path):
    probe = (
        "import flmm; from flmm.config import load_config; "
        "c = load_config('configs/flmm_toy.yaml', components=False); "
        "print(flmm.__file__); print(c.model.lmm.model)"
    )
    done = _run_installed(installed, tmp_path, sys.executable, "-c", probe)
    assert done.returncode == 0, done.stderr[-3000:]
    module, lmm = done.stdout.strip().splitlines()[-2:]
    assert Path(module).is_relative_to(installed)
    assert Path(lmm) == installed / "flmm" / "toy_models" / "tiny_llava"
    assert (Path(lmm) / "model.safetensors").is_file()
    assert sorted(p.name for p in (installed / "flmm" / "configs").glob("*.yaml")) == sorted(
        p.name for p in (REPO_ROOT / "configs").glob("*.yaml")
    )


def test_the_demo_script_runs_the_embedded_default_from_another_folder(installed: Path, tmp_path: Path):
    image = tmp_path / "image.png"
    Image.fromarray(np.full((48, 64, 3), 200, dtype=np.uint8)).save(image)
    done = _run_installed(
        installed, tmp_path, str(installed / "bin" / "flmm-demo"), "--mode", "attend-and-segment",
        "--config", "configs/flmm_toy.yaml", "--image", str(image), "--phrases", "the square",
        "--out", "demo_out",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "demo_out" / "result.json").is_file()
