"""Benchmark flmm side by side with the plain frozen forward and with the reference recipe's configuration.

    python tools/benchmark.py [--suite capture|train|eval|demo|memory ...]
        [--preset toy|llava7b-slice|llava7b ...] [--device cpu|cuda] [--dtype float32|bfloat16]
        [--json PATH] [--repeats N] [--seq-lens 640,2900]
        [--family llava-1.5|qwen2-vl ...] [--slice-layers N] [--batch N] [--phrases N] [--sam ...]

Suites (all by default; `--suite` and `--preset` repeat):
- `capture`: the LMM forward without capture (plain) vs hooked vs eager, per sequence length, for
  LLaVA-1.5 and Qwen2-VL (M-RoPE; `--family`): time, peak memory and their ratios to plain;
- `train`: one training step of flmm (hooked, batched phrases), flmm with the SAM embedding cache warm,
  and the reference-equivalent configuration (batch 1, eager, SAM encoder every step, one decoder call per
  phrase): samples/s, peak memory and the ratio to the reference;
- `eval`: queries/s of tools/test.py's evaluation on the toy, with and without the SAM embedding cache;
- `demo`: a question's latency in the demo, split into generate, grounding and SAM, with the answer's
  features recorded during generation and with a prefill after it, beside plain generate;
- `memory`: the 7B recipe's peak memory by batch size, from the architecture (`flmm.benchmark.memory`), the
  largest batch for 24 / 40 / 80 GB, and the estimate beside what the train suite measured.
Models have the real architectures and random weights; nothing is downloaded. On a CPU the defaults are
what two cores run in minutes (the 7B width with 2 decoder layers, SAM ViT-B); `--device cuda` runs the
full-depth 7B in bf16 with SAM ViT-L.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from flmm.benchmark.capture import capture_rows
from flmm.benchmark.demo import demo_rows
from flmm.benchmark.evaluation import eval_rows
from flmm.benchmark.memory import GIB, estimate, largest_batch
from flmm.benchmark.models import FAMILIES, preset_sizes
from flmm.benchmark.train import train_rows
from flmm.shipped import shipped_path

SUITES = ("capture", "train", "eval", "demo", "memory")
TOY_CONFIG = shipped_path("configs/flmm_toy.yaml")
PRESETS = ("toy", "llava7b-slice", "llava7b")
# The 7B recipe's typical sample: LLaVA-1.5's 576 image tokens + prompt + a RefCOCO text of a few phrases.
RECIPE_SEQ_LEN, RECIPE_PHRASE_TOKENS = 640, 24


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def print_capture(rows: list[dict]) -> None:
    print("\n## capture: LMM forward, plain vs hooked vs eager\n")
    print("| model | seq len | mode | seconds | x plain | peak GiB | extra GiB | extra x plain |")
    print("|---|---|---|---|---|---|---|---|")
    plain = {(r["model"], r["seq_len"]): r for r in rows if r["mode"] == "plain"}
    for r in rows:
        base = plain[(r["model"], r["seq_len"])]
        extra_ratio = r["extra_bytes"] / base["extra_bytes"] if base["extra_bytes"] else float("nan")
        print(
            f"| {r['model']} | {r['seq_len']} | {r['mode']} | {r['seconds']:.3f} | "
            f"{r['seconds'] / base['seconds']:.2f} | {_gib(r['peak_bytes'])} | {_gib(r['extra_bytes'])} | "
            f"{extra_ratio:.2f} |"
        )


def print_train(rows: list[dict]) -> None:
    print("\n## train: one training step, flmm vs the reference-equivalent configuration\n")
    print("| preset | config | batch | SAM | seq len | samples/s | x reference | peak GiB | extra GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    reference = {r["preset"]: r for r in rows if r["config"] == "reference"}
    for r in rows:
        ratio = r["samples_per_s"] / reference[r["preset"]]["samples_per_s"]
        print(
            f"| {r['preset']} | {r['config']} | {r['batch']} | {r['sam']} | {r['seq_len']} | "
            f"{r['samples_per_s']:.3f} | {ratio:.2f} | {_gib(r['peak_bytes'])} | {_gib(r['extra_bytes'])} |"
        )


def print_eval(rows: list[dict]) -> None:
    print("\n## eval: tools/test.py's evaluation, toy config, synthetic refcoco:val, both protocols\n")
    print("| config | queries | seconds | queries/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['queries']} | {r['seconds']:.2f} | {r['queries_per_s']:.1f} |")


def print_demo(rows: list[dict]) -> None:
    print("\n## demo: one question's latency (toy, attend-and-segment, a new image each time)\n")
    print("| path | seconds | x plain generate | generate | grounding prefill | SAM encoder |")
    print("|---|---|---|---|---|---|")
    plain = next(r["seconds"] for r in rows if r["path"] == "plain generate")
    for r in rows:
        print(
            f"| {r['path']} | {r['seconds']:.3f} | {r['seconds'] / plain:.2f} | {r['generate_s']:.3f} | "
            f"{r['grounding_s']:.3f} | {r['sam_s']:.3f} |"
        )


def memory_rows(train: list[dict], slice_layers: int) -> dict:
    """The 7B recipe's table (bf16 LMM, SAM ViT-L, hooked) and the estimate of each measured train row."""
    sizes = preset_sizes("llava7b")
    recipe = dict(sizes=sizes, seq_len=RECIPE_SEQ_LEN, phrase_tokens=RECIPE_PHRASE_TOKENS)
    table = []
    for batch in (1, 2, 4, 8, 16):
        for capture, cache in (("hooked", False), ("hooked", True), ("eager", False)):
            parts = estimate(batch=batch, capture=capture, sam_cache=cache, **recipe)
            table.append({"batch": batch, "capture": capture, "sam_cache": cache, "bytes": parts.total})
    fits = {
        f"{gb} GB": {
            "hooked": largest_batch(gb * 10**9, **recipe),
            "hooked+cache": largest_batch(gb * 10**9, sam_cache=True, **recipe),
            "eager": largest_batch(gb * 10**9, capture="eager", **recipe),
        }
        for gb in (24, 40, 80)
    }
    checks = []
    for r in train:
        parts = estimate(
            preset_sizes(r["preset"], slice_layers),
            batch=r["batch"],
            seq_len=r["seq_len"],
            phrase_tokens=12,
            capture="eager" if r["config"] == "reference" else "hooked",
            sam=r["sam"] if r["sam"] != "tiny" else "vit_b",
            lmm_bytes=2 if r.get("dtype") == "bfloat16" else 4,
            sam_cache=r["config"] == "flmm+cache",
        )
        row = {k: r[k] for k in ("preset", "config", "batch", "sam")}
        checks.append({**row, "estimated_bytes": parts.total, "measured_peak_bytes": r["peak_bytes"]})
    return {"table": table, "fits": fits, "checks": checks}


def print_memory(memory: dict) -> None:
    print(
        "\n## memory: the 7B recipe's peak by batch (bf16 LLaVA-1.5-7B, SAM ViT-L, 640 tokens), estimated\n"
    )
    print("| batch | hooked GiB | hooked + SAM cache GiB | eager GiB |")
    print("|---|---|---|---|")
    by_batch: dict[int, dict] = {}
    for row in memory["table"]:
        key = row["capture"] + ("+cache" if row["sam_cache"] else "")
        by_batch.setdefault(row["batch"], {})[key] = row["bytes"]
    for batch, cells in by_batch.items():
        print(
            f"| {batch} | {_gib(cells['hooked'])} | {_gib(cells['hooked+cache'])} | {_gib(cells['eager'])} |"
        )
    print("\n| GPU | largest batch, hooked | hooked + SAM cache | eager |")
    print("|---|---|---|---|")
    for gpu, cells in memory["fits"].items():
        print(f"| {gpu} | {cells['hooked']} | {cells['hooked+cache']} | {cells['eager']} |")
    if memory["checks"]:
        print("\n| measured train row | estimated GiB | measured peak GiB |")
        print("|---|---|---|")
        for c in memory["checks"]:
            name = f"{c['preset']} {c['config']} batch {c['batch']} SAM {c['sam']}"
            print(f"| {name} | {_gib(c['estimated_bytes'])} | {_gib(c['measured_peak_bytes'])} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", action="append", choices=SUITES, help="repeatable; default: all")
    parser.add_argument("--preset", action="append", choices=PRESETS, help="repeatable; default: toy + slice")
    parser.add_argument("--family", action="append", choices=FAMILIES, help="capture suite; default: both")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="default: bf16 on cuda"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seq-lens", default=None, help="capture lengths; default 640,2900 (cpu) or +8000")
    parser.add_argument("--slice-layers", type=int, default=2, help="decoder layers of llava7b-slice")
    parser.add_argument("--batch", type=int, default=4, help="flmm's batch in the train suite")
    parser.add_argument("--phrases", type=int, default=3, help="phrases per sample")
    parser.add_argument(
        "--sam", default=None, help="SAM of the 7B presets; default vit_b (cpu), vit_l (cuda)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available on this machine", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    suites = args.suite or list(SUITES)
    presets = args.preset or (["llava7b"] if device.type == "cuda" else ["toy", "llava7b-slice"])
    seq_lens = [
        int(s)
        for s in (args.seq_lens or ("640,2900,8000" if device.type == "cuda" else "640,2900")).split(",")
    ]
    sam_7b = args.sam or ("vit_l" if device.type == "cuda" else "vit_b")
    print(
        f"device={device} dtype={str(dtype).removeprefix('torch.')} presets={presets} repeats={args.repeats}"
    )
    results: dict = {}
    if "capture" in suites:
        results["capture"] = []
        for preset in presets:
            lengths = seq_lens if preset != "toy" else [min(s, 1000) for s in seq_lens[:2]]
            results["capture"] += capture_rows(
                preset,
                lengths,
                device,
                dtype,
                phrases=args.phrases,
                repeats=args.repeats,
                slice_layers=args.slice_layers,
                families=tuple(args.family or FAMILIES),
            )
        print_capture(results["capture"])
    if "train" in suites or "memory" in suites:
        results["train"] = []
        for preset in presets if "train" in suites else []:
            sam = "tiny" if preset == "toy" else sam_7b
            seq_len = None if preset == "toy" else RECIPE_SEQ_LEN
            rows = train_rows(
                preset,
                device,
                dtype,
                args.batch,
                sam,
                seq_len,
                repeats=args.repeats,
                slice_layers=args.slice_layers,
            )
            results["train"] += [{**row, "dtype": str(dtype).removeprefix("torch.")} for row in rows]
        if results["train"]:
            print_train(results["train"])
    if "eval" in suites:
        with tempfile.TemporaryDirectory() as workdir:
            results["eval"] = eval_rows(TOY_CONFIG, Path(workdir))
        print_eval(results["eval"])
    if "demo" in suites:
        results["demo"] = demo_rows(TOY_CONFIG, repeats=max(args.repeats, 1))
        print_demo(results["demo"])
    if "memory" in suites:
        measured = [r for r in results["train"] if r["preset"] != "toy"]
        results["memory"] = memory_rows(measured, args.slice_layers)
        print_memory(results["memory"])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
