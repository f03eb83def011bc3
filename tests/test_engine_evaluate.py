"""The evaluation tool: its report, its exactness under DDP, and ground truth scoring 100 through it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from pycocotools import mask as mask_utils

from flmm.config import load_config
from flmm.data.splits import build_split_dataset, default_eval_splits
from flmm.data.synthetic import SyntheticConfig, generate_world
from flmm.engine.build import config_to_dict
from flmm.engine.evaluate import (
    EvalTask,
    EvaluationModule,
    checkpoint_config,
    evaluate,
    ground_truth_predictor,
    load_checkpoint,
)
from flmm.engine.module import GroundingModule
from flmm.engine.report import QueryRecord, distinct_records
from tests.conftest import REPO_ROOT, build_toy_models, load_tool

SPLITS = "refcoco:val,png:val2017"
RES_KEYS = ["n_queries", "cIoU", "gIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "REC@0.5"]
PNG_RATES = ["AR", "AR_things", "AR_stuff", "AR_singulars", "AR_plurals"]
QUIET = ["data.num_workers=0", "train.progress_bar=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint of a two-step smoke training of shrunken toy models on a tiny synthetic world."""
    base = tmp_path_factory.mktemp("evaluate")
    generate_world(
        base / "world", SyntheticConfig(seed=0, n_res_images=24, n_png_images=8, size=64, max_objects=3)
    )
    build_toy_models(base / "models" / "llava", base / "models" / "sam.pth")
    overrides = [
        f"data.root={base / 'world'}",
        f"output_dir={base / 'run'}",
        f"model.lmm.model={base / 'models' / 'llava'}",
        f"model.refiner.checkpoint={base / 'models' / 'sam.pth'}",
        "model.mask_head.channels=[8,16,32,64]",
        "data.batch_size=2",
        "train.epochs=1",
        "train.limit_train_batches=2",
        "train.limit_val_batches=1",
        *QUIET,
    ]
    assert load_tool("train").main([str(REPO_ROOT / "configs" / "flmm_toy.yaml"), *overrides]) == 0
    return base / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in this process, as in each DDP process below: a sample then meets the very same
    floating-point operations in both runs of the DDP test (and on 2 shared cores, small ops run faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_run(trained, tmp_path_factory) -> Path:
    """tools/test.py in this process, one device, one sample per batch, masks and two overlays each way."""
    out = tmp_path_factory.mktemp("eval_single")
    assert load_tool("test").main([*_argv(trained, out), *QUIET]) == 0
    return out


def _argv(checkpoint: Path, out: Path) -> list[str]:
    """tools/test.py arguments of both runs the DDP test compares."""
    flags = ["--splits", SPLITS, "--save-masks", "--overlays", "2", "data.batch_size=1"]
    return ["--ckpt", str(checkpoint), "--out", str(out), *flags]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def _query_count(cfg, split: str, protocol: str) -> int:
    dataset = build_split_dataset(cfg.data, split, protocol)
    return sum(len(dataset[i]["queries"]) for i in range(len(dataset)))


def test_results_json_has_every_metric_per_split_and_protocol(trained, single_run):
    results = _results(single_run)
    cfg = checkpoint_config(load_checkpoint(trained))
    assert results["checkpoint"] == str(trained.resolve())
    config = OmegaConf.to_container(OmegaConf.load(single_run / "config.yaml"))
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    assert results["config_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert config["data"]["batch_size"] == 1  # the resolved config: the checkpoint's, with the overrides
    assert list(results["splits"]) == ["refcoco:val", "png:val2017"]
    res = results["splits"]["refcoco:val"]
    assert list(res) == ["all-sentences", "first-sentence-concat"]
    for protocol, metrics in res.items():
        assert list(metrics) == [*RES_KEYS, *(f"coarse_{k}" for k in RES_KEYS[1:])]
        assert metrics["n_queries"] == _query_count(cfg, "refcoco:val", protocol) > 0
        assert all(0 <= metrics[k] <= 100 for k in metrics if k != "n_queries")
    png = results["splits"]["png:val2017"]
    assert list(png) == ["narrative"]
    assert png["narrative"]["n_queries"] == _query_count(cfg, "png:val2017", "narrative") > 0
    assert {*PNG_RATES, *(f"coarse_{k}" for k in PNG_RATES), "n_things", "n_plurals"} <= set(png["narrative"])


def test_results_md_names_the_protocol_in_every_row(single_run):
    table_rows = [r for r in (single_run / "results.md").read_text().splitlines() if r.startswith("| ")]
    protocols = [row.split("|")[2].strip() for row in table_rows if "split" not in row]
    assert protocols == ["all-sentences", "first-sentence-concat", "narrative"]
    assert "coarse_AR" in (single_run / "results.md").read_text()


def test_overlays_show_the_best_and_worst_queries(single_run):
    for name in ("refcoco_val_all-sentences", "refcoco_val_first-sentence-concat", "png_val2017_narrative"):
        folder = single_run / "overlays" / name
        assert sorted(p.name for p in folder.iterdir()) == [
            "best_01.png",
            "best_02.png",
            "worst_01.png",
            "worst_02.png",
        ]


def test_saved_masks_are_one_rle_per_query_consistent_with_giou(single_run):
    results = _results(single_run)
    for split, protocol in [("refcoco:val", "all-sentences"), ("png:val2017", "narrative")]:
        path = single_run / f"masks_{split.replace(':', '_')}_{protocol}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        metrics = results["splits"][split][protocol]
        assert len(rows) == len({r["query_id"] for r in rows}) == metrics["n_queries"]
        assert set(rows[0]) == {"query_id", "expression", "image_id", "rle", "iou"}
        decoded = mask_utils.decode({**rows[0]["rle"], "counts": rows[0]["rle"]["counts"].encode()})
        assert list(decoded.shape) == rows[0]["rle"]["size"]
        mean_iou = 100 * sum(r["iou"] for r in rows) / len(rows)
        assert mean_iou == pytest.approx(metrics["gIoU" if "gIoU" in metrics else "AR"], abs=1e-6)


def test_two_ddp_processes_give_exactly_the_single_process_results(trained, single_run, tmp_path):
    cfg = checkpoint_config(load_checkpoint(trained))
    tasks = [
        ("refcoco:val", "all-sentences"),
        ("refcoco:val", "first-sentence-concat"),
        ("png:val2017", "narrative"),
    ]
    sizes = [len(build_split_dataset(cfg.data, split, protocol)) for split, protocol in tasks]
    assert any(n % 2 for n in sizes), f"no odd-sized split among {sizes}; the test would not probe sharding"
    out = tmp_path / "ddp"
    ddp = ["train.devices=2", "train.strategy=ddp", "train.accelerator=cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "tools/test.py", *_argv(trained, out), *QUIET, *ddp],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert _results(out)["splits"] == _results(single_run)["splits"]
    for path in sorted(single_run.glob("masks_*.jsonl")):
        assert (out / path.name).read_text().splitlines() == path.read_text().splitlines()
    overlays = sorted(single_run.glob("overlays/*/*.png"))
    assert len(overlays) == 12
    assert [p.read_bytes() for p in overlays] == [
        (out / p.relative_to(single_run)).read_bytes() for p in overlays
    ]


def test_ground_truth_as_predictions_scores_100_with_every_query_counted_once(real_format_root, tmp_path):
    cfg = load_config(
        None,
        [
            f"data.root={real_format_root}",
            "data.max_skip_fraction=0",
            "train.accelerator=cpu",
            "train.precision=32",
            *QUIET,
        ],
    )
    splits = default_eval_splits(real_format_root)
    results = evaluate(None, cfg, splits, out_dir=tmp_path, predictor=ground_truth_predictor, save_masks=True)
    assert results == _results(tmp_path)
    truth = json.loads((real_format_root / "truth.json").read_text(encoding="utf-8"))
    expected = {}
    for name, by_split in truth["refcoco_family"].items():
        for split, queries in by_split.items():
            if f"{name}:{split}" not in splits:
                continue
            expected[f"{name}:{split}"] = {
                "all-sentences": len(queries),
                "first-sentence-concat": sum(q["first_sentence"] for q in queries),
            }
    expected["png:val2017"] = {"narrative": len(truth["png_val2017"])}
    got = {s: {p: m["n_queries"] for p, m in by_p.items()} for s, by_p in results["splits"].items()}
    assert got == expected
    for split, by_protocol in results["splits"].items():
        for protocol, metrics in by_protocol.items():
            rates = {k: v for k, v in metrics.items() if k != "n_queries" and not k.startswith("n_")}
            assert all(v == 100.0 for v in rates.values() if v is not None), (split, protocol, rates)
            assert metrics.get("cIoU", metrics.get("AR")) == 100.0
            slug = f"{split.replace(':', '_')}_{protocol}"
            ids = [json.loads(line)["query_id"] for line in (tmp_path / f"masks_{slug}.jsonl").open()]
            assert len(ids) == len(set(ids)) == metrics["n_queries"]


def test_metric_states_are_private_to_each_process_once_testing_starts():
    tasks = [EvalTask("refcoco:val", "all-sentences", None), EvalTask("png:val2017", "narrative", None)]
    evaluator = EvaluationModule(ground_truth_predictor, tasks, report=None, keep_masks=False)
    # What ddp_spawn does on the CPU to the module it hands to its workers: in-place sums into these
    # states would then add up the queries of every rank in every rank.
    evaluator.share_memory()
    assert all(state.is_shared() for m in evaluator.refined_metrics for state in m.metric_state.values())
    evaluator.on_test_epoch_start()
    metrics = [*evaluator.refined_metrics, *evaluator.coarse_metrics]
    assert not any(state.is_shared() for m in metrics for state in m.metric_state.values())


def test_a_model_without_refiner_scores_its_coarse_masks_as_predictions(trained, tmp_path):
    cfg = checkpoint_config(load_checkpoint(trained), ["model.refiner=null", "data.batch_size=4", *QUIET])
    module = GroundingModule(config_to_dict(cfg), val_splits=[])
    # A large bias makes every coarse pixel positive, so the score cannot be 0 by chance of the weights.
    torch.nn.init.constant_(module.model.mask_head.logits.bias, 20.0)
    results = evaluate(module, cfg, ["refcoco:val"], ["all-sentences"], out_dir=tmp_path)
    metrics = results["splits"]["refcoco:val"]["all-sentences"]
    assert metrics["cIoU"] > 0
    assert all(metrics[k] == metrics[f"coarse_{k}"] for k in RES_KEYS[1:])


def test_gathered_records_count_each_query_once_in_dataset_order():
    def record(query_id, sample_index, iou=0.5):
        return QueryRecord(query_id, sample_index, 0, "the dog", 7, iou)

    rank0 = [record("q0", 0), record("q2", 2), record("q3", 2, iou=0.1)]
    rank1 = [record("q1", 1), record("q2", 3, iou=0.9)]
    merged = distinct_records([rank0, rank1])
    assert [(r.query_id, r.iou) for r in merged] == [("q0", 0.5), ("q1", 0.5), ("q2", 0.5), ("q3", 0.1)]
    assert distinct_records([rank1, rank0]) == merged


def _error(capsys, argv: list[str]) -> str:
    assert load_tool("test").main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


def test_missing_checkpoint_is_one_clear_error(capsys, tmp_path):
    err = _error(capsys, ["--ckpt", str(tmp_path / "nope.ckpt")])
    assert err.strip() == f"error: checkpoint not found: {tmp_path / 'nope.ckpt'}"


def test_unknown_split_name_is_one_clear_error(trained, capsys):
    err = _error(capsys, ["--ckpt", str(trained), "--splits", "refcoco:vall", *QUIET])
    assert "'refcoco:vall'" in err and "testA" in err


def test_override_typo_is_one_clear_error(trained, capsys):
    err = _error(capsys, ["--ckpt", str(trained), "data.roott=/x"])
    assert "unknown key 'data.roott'" in err and "Did you mean 'data.root'" in err


def test_missing_data_is_one_clear_error(trained, capsys, tmp_path):
    no_data = [f"data.root={tmp_path}", "data.synthetic=null"]
    err = _error(capsys, ["--ckpt", str(trained), "--splits", "refcocog:val", *no_data])
    assert "refcocog:val" in err and "data.root" in err


def test_spawn_strategy_is_refused_for_the_model(trained, capsys):
    err = _error(capsys, ["--ckpt", str(trained), "--splits", "refcoco:val", "train.strategy=ddp_spawn"])
    assert "train.strategy=ddp_spawn" in err and "use ddp" in err


def test_checkpoint_of_another_lmm_is_refused(trained, capsys, tmp_path):
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    checkpoint["flmm_identity"]["attention_channels"] += 1
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    err = _error(capsys, ["--ckpt", str(other), "--splits", "refcoco:val", *QUIET])
    assert "another LMM" in err and "attention_channels" in err


def test_a_checkpoints_config_never_writes_its_data_root_unasked(trained, capsys, tmp_path):
    """A checkpoint from elsewhere names a synthetic world it would generate: tools/test.py says what is
    missing and writes nothing; with --build-missing it generates it."""
    elsewhere = [
        f"data.root={tmp_path / 'world'}",
        "data.synthetic={seed: 0, n_res_images: 12, n_png_images: 0, size: 64, max_objects: 2}",
    ]
    argv = ["--ckpt", str(trained), "--splits", "refcoco:val", "--out", str(tmp_path / "eval"), *QUIET]
    err = _error(capsys, [*argv, *elsewhere])
    assert "--build-missing" in err and str(tmp_path / "world") in err
    assert not (tmp_path / "world").exists()
    assert load_tool("test").main([*argv, *elsewhere, "--build-missing"]) == 0
    assert (tmp_path / "world" / "coco").is_dir()


def test_a_checkpoints_missing_lmm_is_reported_never_built(trained, capsys, tmp_path):
    missing = tmp_path / "toy_models" / "llava"
    argv = ["--ckpt", str(trained), "--splits", "refcoco:val", f"model.lmm.model={missing}", *QUIET]
    err = _error(capsys, [*argv, "--build-missing"])
    assert f"tools/pretrain_toy_lmm.py --out {missing}" in err
    assert not missing.exists()
