"""The synthetic ReasonSeg split: one question per image that names one object through an attribute, a
relation, a comparison or a location, written in LISA's on-disk format and read back by its loader."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from flmm.data.reasonseg import ReasonSegDataset, reasonseg_dir
from flmm.data.synthetic import SyntheticConfig, generate_world
from flmm.data.synthetic_reason import KINDS, questions, write_reasonseg
from flmm.data.synthetic_setup import ensure_synthetic_world

SIZE = 100
WORLD = {
    "seed": 0,
    "n_res_images": 6,
    "n_png_images": 3,
    "size": 64,
    "max_objects": 3,
    "holdout_combos": False,
}


def obj(shape: str, colour: str, size: str, cx: float, cy: float, r: float) -> SimpleNamespace:
    """An object with the fields the synthetic world's language reads (`shape, colour, size, cx, cy, r`)."""
    return SimpleNamespace(shape=shape, colour=colour, size=size, cx=cx, cy=cy, r=r)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reason")
    write_reasonseg(root, seed=0, n_images=16, size=96, max_objects=4)
    return root


def _records(root: Path, split: str = "val") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(reasonseg_dir(root, split).glob("*.json"))]


def test_a_unique_colour_gives_an_attribute_question_and_a_shared_one_none():
    objs = [obj("circle", "red", "large", 20, 20, 10), obj("square", "blue", "large", 80, 80, 10)]
    assert questions(objs, 0, SIZE, SIZE)["attribute"] == {"d": "red"}
    objs[1].colour = "red"
    assert "attribute" not in questions(objs, 0, SIZE, SIZE)


def test_a_comparison_needs_a_clear_size_margin():
    objs = [obj("circle", "red", "large", 20, 20, 20), obj("star", "blue", "small", 80, 80, 8)]
    assert questions(objs, 0, SIZE, SIZE)["comparison"] == {"most": "biggest one"}
    assert questions(objs, 1, SIZE, SIZE)["comparison"] == {"most": "smallest one"}
    objs[1].r = 18
    assert "comparison" not in questions(objs, 0, SIZE, SIZE)


def test_a_relation_question_names_the_anchor_only_and_still_singles_out_the_target():
    objs = [
        obj("circle", "red", "large", 50, 20, 8),
        obj("square", "blue", "large", 50, 80, 8),
        obj("star", "green", "small", 85, 85, 6),
    ]
    relation = questions(objs, 0, SIZE, SIZE)["relation"]
    assert relation["a"].endswith("square") and relation["rel"] == "above"


def test_every_kind_and_both_query_lengths_are_written(split: Path):
    records = _records(split, "val") + _records(split, "test")
    assert len(records) == 16
    assert {r["kind"] for r in records} == set(KINDS)
    assert {r["is_sentence"] for r in records} == {True, False}
    assert all(len(r["text"]) == 1 and r["answer"].startswith("the ") for r in records)


def test_the_split_reads_with_lisas_loader_and_every_target_has_a_mask(split: Path):
    dataset = ReasonSegDataset(split, "val", "all-sentences")
    samples = [dataset[i] for i in range(len(dataset))]
    assert len(samples) == len(_records(split, "val"))
    assert all(s["masks"].shape == (1, 96, 96) and s["masks"].sum() > 20 for s in samples)


def test_the_same_seed_writes_the_same_files(split: Path, tmp_path: Path):
    write_reasonseg(tmp_path, seed=0, n_images=16, size=96, max_objects=4)
    for name in ("val", "test"):
        ours = sorted(reasonseg_dir(split, name).iterdir())
        again = sorted(reasonseg_dir(tmp_path, name).iterdir())
        assert [p.name for p in ours] == [p.name for p in again]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, again, strict=True))


def _content(path: Path) -> bytes | dict:
    """A file's bytes; for a JSON file, its object without the `info` header (which records the config)."""
    if path.suffix != ".json":
        return path.read_bytes()
    loaded = json.loads(path.read_text())
    return {k: v for k, v in loaded.items() if k != "info"} if isinstance(loaded, dict) else loaded


def test_the_split_leaves_the_rest_of_the_world_as_it_was(tmp_path: Path):
    base = WORLD
    generate_world(tmp_path / "without", SyntheticConfig(**base))
    generate_world(tmp_path / "with", SyntheticConfig(**base, n_reason_images=4))
    without = sorted(p.relative_to(tmp_path / "without") for p in (tmp_path / "without").rglob("*.*"))
    for path in without:
        assert _content(tmp_path / "with" / path) == _content(tmp_path / "without" / path), path
    assert len(_records(tmp_path / "with", "val") + _records(tmp_path / "with", "test")) == 4


def test_a_world_made_without_the_split_gets_only_the_split_added(tmp_path: Path):
    base = WORLD
    generate_world(tmp_path, SyntheticConfig(**base))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.*")}
    data = OmegaConf.create({"root": str(tmp_path), "synthetic": {**base, "n_reason_images": 4}})
    assert ensure_synthetic_world(data)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert np.array([len(_records(tmp_path, s)) for s in ("val", "test")]).sum() == 4
    assert not ensure_synthetic_world(data)
