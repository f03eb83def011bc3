"""Fixtures of the conformance kit: one tiny instance per LMM family (`tests/lmm/builders/`)."""

from __future__ import annotations

import shutil

import pytest

from tests.lmm.builders import BUILDERS, TinyFamily


def _build(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    yield BUILDERS[request.param](folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tiny_family(request, tmp_path_factory) -> TinyFamily:
    yield from _build(request, tmp_path_factory)


def _has_short_windows(family: TinyFamily) -> bool:
    config = getattr(family.model.config, "text_config", family.model.config)
    return "sliding_attention" in (getattr(config, "layer_types", None) or [])


@pytest.fixture(scope="module")
def sliding_families(tmp_path_factory) -> list[TinyFamily]:
    """The tiny families with sliding-window layers (at least one: the kit must cover windows)."""
    built = [BUILDERS[name](tmp_path_factory.mktemp(name)) for name in sorted(BUILDERS)]
    return [family for family in built if _has_short_windows(family)]
