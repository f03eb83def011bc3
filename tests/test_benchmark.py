"""The benchmark runs its suites end to end and writes every row (numbers are not asserted: no timed tests),
and the memory model counts the real architectures."""

from __future__ import annotations

import json

import pytest

from flmm.benchmark.memory import GIB, architecture_counts, estimate, largest_batch
from flmm.benchmark.models import preset_sizes
from tests.conftest import load_tool


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["--preset", "toy", "--repeats", "1", "--seq-lens", "200,300", "--batch", "2", "--phrases", "1"]
    assert load_tool("benchmark").main([*argv, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_capture_suite_measures_every_mode_at_every_length(toy_results: dict):
    rows = toy_results["capture"]
    assert {(r["model"], r["mode"], r["seq_len"]) for r in rows} == {
        (f"{family} (toy)", mode, length)
        for family in ("llava-1.5", "qwen2-vl")  # qwen2-vl: M-RoPE positions
        for mode in ("plain", "hooked", "eager")
        for length in (200, 300)
    }
    assert all(r["seconds"] > 0 and r["peak_bytes"] > 0 for r in rows)


def test_the_train_suite_runs_the_reference_and_flmm_with_and_without_the_cache(toy_results: dict):
    rows = {r["config"]: r for r in toy_results["train"]}
    assert set(rows) == {"reference", "flmm", "flmm+cache"}
    assert rows["reference"]["batch"] == 1 and rows["flmm"]["batch"] == rows["flmm+cache"]["batch"] == 2
    assert all(r["samples_per_s"] > 0 for r in rows.values())


def test_the_eval_suite_times_an_evaluation_with_and_without_the_cache(toy_results: dict):
    rows = {r["config"]: r for r in toy_results["eval"]}
    assert set(rows) == {"flmm", "flmm+cache"}
    assert rows["flmm"]["queries"] == rows["flmm+cache"]["queries"] > 0


def test_the_demo_suite_splits_the_latency_of_both_grounding_paths(toy_results: dict):
    rows = {r["path"]: r for r in toy_results["demo"]}
    assert set(rows) == {"decode grounding", "prefill grounding", "plain generate"}
    assert rows["decode grounding"]["grounding_s"] == 0 < rows["prefill grounding"]["grounding_s"]
    assert rows["plain generate"]["sam_s"] == 0 < rows["decode grounding"]["sam_s"]


def test_the_memory_suite_tables_batches_and_gpus(toy_results: dict):
    memory = toy_results["memory"]
    assert {row["batch"] for row in memory["table"]} == {1, 2, 4, 8, 16}
    assert set(memory["fits"]) == {"24 GB", "40 GB", "80 GB"}


def test_the_memory_model_counts_llava_7b_and_sam_vit_l():
    counts = architecture_counts(preset_sizes("llava7b"), "vit_l")
    assert 7.0e9 < counts["lmm"] < 7.1e9  # LLaVA-1.5-7B: 7.06 B parameters
    assert 3.0e8 < counts["sam"] < 3.2e8  # SAM ViT-L: 312 M


def test_eager_capture_keeps_every_layers_probabilities():
    sizes = preset_sizes("llava7b")
    eager = estimate(sizes, batch=1, seq_len=640, phrase_tokens=24, capture="eager")
    # 32 layers x 32 heads x 640 x 640 bf16: the 0.8 GiB per sample the reference pays at 640 tokens.
    assert eager.capture == 32 * 32 * 640 * 640 * 2
    hooked = estimate(sizes, batch=1, seq_len=640, phrase_tokens=24, capture="hooked")
    assert hooked.capture < eager.capture / 10


def test_a_bigger_gpu_fits_a_bigger_batch():
    recipe = dict(sizes=preset_sizes("llava7b"), seq_len=640, phrase_tokens=24)
    assert (
        largest_batch(16 * GIB, **recipe)
        < largest_batch(24 * GIB, **recipe)
        < largest_batch(80 * GIB, **recipe)
    )
    assert largest_batch(10 * GIB, **recipe) == 0  # the bf16 7B alone is 13 GiB
