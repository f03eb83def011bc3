"""Train and evaluate one config under several seeds; report each metric's mean and spread.

    python tools/sweep_seeds.py CONFIG [--seeds 0 1 2] [--out DIR] [--protocol P] [key=value ...]

For every seed s it runs, as separate processes, exactly what a user runs:
`tools/train.py CONFIG seed=s output_dir=DIR/seed_s [key=value ...]`, then
`tools/test.py --ckpt DIR/seed_s/checkpoints/last.ckpt --protocol P`. The seed changes the head's
initialisation and the data order (configs/flmm_toy.yaml: `data.seed: ${seed}`), not the data or the frozen
models. Writes DIR/sweep.json (every run's results and the summary) and DIR/sweep.md, and prints the table:
per split and protocol, mean, sample standard deviation, min and max over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from flmm.cli import output_folder, parse_with_overrides
from flmm.engine.evaluate import RES_EVAL_PROTOCOLS
from flmm.errors import FlmmError

TOOLS = Path(__file__).resolve().parent
PROTOCOLS = ("both", *RES_EVAL_PROTOCOLS)  # tools/test.py's --protocol
METRICS = ("cIoU", "coarse_cIoU", "gIoU", "P@0.5", "AR", "selector_token_F1")


def run_seed(config: str, seed: int, out: Path, protocol: str, overrides: list[str]) -> dict:
    """Train + evaluate one seed in subprocesses; the `splits` of its results.json."""
    run_dir = out / f"seed_{seed}"
    train = [sys.executable, str(TOOLS / "train.py"), config, f"seed={seed}", f"output_dir={run_dir}"]
    subprocess.run([*train, *overrides], check=True)
    test = [sys.executable, str(TOOLS / "test.py"), "--ckpt", str(run_dir / "checkpoints" / "last.ckpt")]
    subprocess.run(
        [*test, "--protocol", protocol, "--overlays", "0", "--out", str(run_dir / "eval")], check=True
    )
    return json.loads((run_dir / "eval" / "results.json").read_text())["splits"]


def summarize(runs: dict[int, dict]) -> list[dict]:
    """One row per (split, protocol, metric): mean, sample std (0 for one seed), min, max, per-seed values."""
    rows = []
    first = next(iter(runs.values()))
    for split, protocols in first.items():
        for protocol, metrics in protocols.items():
            for metric in (m for m in METRICS if m in metrics):
                values = [float(r[split][protocol][metric]) for r in runs.values()]
                rows.append(
                    {
                        "split": split,
                        "protocol": protocol,
                        "metric": metric,
                        "mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values),
                        "max": max(values),
                        "values": values,
                    }
                )
    return rows


def format_table(rows: list[dict], seeds: list[int]) -> str:
    lines = [
        f"| split | protocol | metric | mean | std | min | max | seeds {' / '.join(map(str, seeds))} |",
        "|:---|:---|:---|---:|---:|---:|---:|:---|",
    ]
    for r in rows:
        values = " / ".join(f"{v:.2f}" for v in r["values"])
        lines.append(
            f"| {r['split']} | {r['protocol']} | {r['metric']} | {r['mean']:.2f} | {r['std']:.2f} "
            f"| {r['min']:.2f} | {r['max']:.2f} | {values} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="YAML config, e.g. configs/flmm_toy.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="default runs/sweep_<config name>")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="all-sentences", help="RES protocol(s) of tools/test.py"
    )
    args = parse_with_overrides(parser, argv, "train.epochs=3")
    try:
        if args.out is not None:
            out = output_folder(args.out)
        else:
            out = output_folder(Path("runs") / f"sweep_{Path(args.config).stem}", "the default output folder")
    except FlmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # tools/train.py refuses to start over a run; say so for every seed before the first one trains.
    done = [
        out / f"seed_{seed}" for seed in args.seeds if (out / f"seed_{seed}/checkpoints/last.ckpt").is_file()
    ]
    if done:
        print(
            f"error: {', '.join(map(str, done))} already hold a run; give the sweep another --out or "
            "remove them",
            file=sys.stderr,
        )
        return 2
    try:
        runs = {seed: run_seed(args.config, seed, out, args.protocol, args.overrides) for seed in args.seeds}
    except subprocess.CalledProcessError as exc:
        print(
            f"error: a run of the sweep failed (exit {exc.returncode}): {' '.join(exc.cmd)}", file=sys.stderr
        )
        return 2
    rows = summarize(runs)
    table = format_table(rows, args.seeds)
    command = " ".join(
        ["tools/sweep_seeds.py", args.config, "--seeds", *map(str, args.seeds), *args.overrides]
    )
    (out / "sweep.json").write_text(json.dumps({"command": command, "runs": runs, "summary": rows}, indent=1))
    (out / "sweep.md").write_text(f"`{command}`\n\n{table}\n")
    print(table)
    print(f"sweep results in {out} (sweep.md, sweep.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
