"""Shared fixtures: the real-format dataset beside the checkout, and offline settings for every test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_FORMAT = REPO_ROOT.parent / "shared" / "fixtures" / "real_format"


@pytest.fixture(scope="session")
def real_format_root() -> Path:
    """The shared real-format fixture (made outside this project); skipped only when it is absent."""
    if not (REAL_FORMAT / "truth.json").is_file():
        pytest.skip(f"shared fixture absent: {REAL_FORMAT}")
    return REAL_FORMAT


@pytest.fixture
def writable_real_format(real_format_root: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the real-format fixture, for tests that break it on purpose."""
    root = tmp_path / "data"
    shutil.copytree(real_format_root, root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def load_tool(name: str):
    """Import `tools/<name>.py` as a module, so tests call a tool's `main(argv)` in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
