"""Every command in the READMEs' code blocks (README.md, data/README.md) runs as written, so the READMEs and
the code cannot drift apart.

The commands run in scratch folders that hold the checkout's files (linked) but their own `runs/` and
`data/`, in README order, through bash, exactly as a user types them, with these substitutions only:
`[optional parts]` are left out, and the placeholders DIR, FILE and /path/to/root become scratch paths.
`RULES` says for each command what it must do:
- `ok`: exit 0 (commands that can run on the embedded default);
- `ok` with `shrink`: exit 0 with `key=value` / option arguments appended that shrink a run of minutes or
  hours to seconds (the toy pretrainings, the control run, the seed sweep): the command line as written is
  parsed and its config loaded, then run small;
- `refuses`: exit 2 with the given message before loading anything (commands that need weights, data or a
  GPU this machine does not have);
- `setup`: the set-up command, which ran before the tests did (it is `.ci/run`'s first step); the rest of
  the line runs (the main command: the embedded default's training with `train.epochs=1` appended, one of
  its six epochs, as each runs every part of the recipe and all six would take 8 of the suite's 15 minutes
  on 2 cores; then its evaluation, in full);
- `web`: the web demo, served on a free port (`--port 0` appended); its page (the Gradio app's, found by
  its title) is fetched, then it is stopped.
A README command without a rule, or a rule without its command, fails the test. The commands that use the
main command's run go in its folder after it; the others run in a second folder, in a test of their own.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SETUP = "bash tools/setup.sh && "
TEST_COMMAND = "bash tools/setup.sh && .venv/bin/python -m pytest -q"
TINY_LMM = "steps=2 scenes=8 eval_scenes=2 batch_size=2"
TINY_SAM = "steps=2 scenes=4 eval_scenes=2 batch_size=2"
# Stored in the checkpoint's config, so the tools/test.py after it evaluates val only.
TINY_RUN = (
    "train.epochs=1 train.limit_train_batches=2 train.limit_val_batches=1 'data.test_splits=[refcoco:val]'"
)


@dataclass(frozen=True)
class Rule:
    expect: str  # "ok" | "refuses" | "setup" | "web"
    message: str = ""  # with "refuses": a regex the error must match
    shrink: str = ""  # with "ok" or "setup": arguments appended to make it fast


MAIN = (
    "bash tools/setup.sh && .venv/bin/python tools/train.py configs/flmm_toy.yaml && "
    ".venv/bin/python tools/test.py --ckpt runs/flmm_toy/checkpoints/last.ckpt"
)
IMAGE = "data/synthetic/coco/train2014/COCO_train2014_000000000001.jpg"
RULES: dict[str, Rule] = {
    MAIN: Rule("setup", shrink="train.epochs=1"),
    TEST_COMMAND: Rule("setup"),
    ".venv/bin/python tools/train.py configs/flmm_llava7b.yaml [key=value ...] "
    "[--resume runs/flmm_llava7b/checkpoints/last.ckpt]": Rule(
        "refuses",
        r"(?s)cannot start, missing:\n.*  - SAM weights \(model\.refiner\.checkpoint\): "
        r"checkpoints/sam_vit_l_0b3195\.pth not found",
    ),
    ".venv/bin/python tools/test.py --ckpt runs/flmm_llava7b/checkpoints/last.ckpt [--splits refcoco:val,"
    "refcocog:test] [--protocol all-sentences|first-sentence-concat|both] [--out DIR] [--save-masks] "
    "[--overlays N] [key=value ...]": Rule("refuses", r"runs/flmm_llava7b/checkpoints/last.ckpt"),
    ".venv/bin/python tools/demo.py --ckpt runs/flmm_toy/checkpoints/last.ckpt --image "
    'data/synthetic/reason_seg/ReasonSeg/val/reason_000025.jpg "What is above the blue circle?" '
    "[--out DIR] [--format plain|kosmos|glamm]": Rule("ok"),
    ".venv/bin/python tools/demo.py --mode attend-and-segment --config configs/flmm_toy.yaml "
    f'--image {IMAGE} --phrases "the blue diamond; the square"': Rule("ok"),
    ".venv/bin/python tools/demo.py --web --ckpt runs/flmm_toy/checkpoints/last.ckpt": Rule("web"),
    ".venv/bin/python tools/export_head.py --ckpt runs/flmm_toy/checkpoints/last.ckpt "
    "--out runs/flmm_toy/head": Rule("ok"),
    ".venv/bin/python tools/benchmark.py --device cuda --json runs/benchmark_gpu.json": Rule(
        "refuses", "CUDA is not available"
    ),
    ".venv/bin/python tools/benchmark.py --preset toy --json runs/benchmark_toy.json": Rule(
        # Every suite runs in tests/test_benchmark.py; here the command itself, on its cheapest suite.
        "ok",
        shrink="--suite memory",
    ),
    ".venv/bin/python tools/browse_data.py configs/flmm_llava7b.yaml --split refcocog:val --out runs/browse "
    "data.root=/path/to/root": Rule("ok"),
    ".venv/bin/python tools/browse_data.py configs/flmm_toy.yaml --split refcoco:val --out runs/browse_toy": (
        Rule("ok")
    ),
    ".venv/bin/python tools/make_synthetic.py --out data/synthetic_demo --seed 1 --images 40 --png-images 10 "
    "[--size PX] [key=value ...]": Rule("ok"),
    ".venv/bin/python tools/probe_grounding.py --lmm toy_models/tiny_llava": Rule("ok"),
    ".venv/bin/python tools/pretrain_toy_lmm.py --out data/toy_models/tiny_llava_random --steps 0": Rule(
        "ok"
    ),
    ".venv/bin/python tools/train.py configs/flmm_toy_control.yaml && .venv/bin/python tools/test.py --ckpt "
    "runs/flmm_toy_control/checkpoints/last.ckpt": Rule("ok", shrink=TINY_RUN),
    ".venv/bin/python tools/pretrain_toy_lmm.py --out data/toy_models/tiny_llava_captions": Rule(
        "ok", shrink=TINY_LMM
    ),
    ".venv/bin/python tools/pretrain_toy_lmm.py --config configs/toy_lmm_chat.yaml --out DIR": Rule(
        "ok", shrink=TINY_LMM
    ),
    ".venv/bin/python tools/pretrain_toy_sam.py --out FILE": Rule("ok", shrink=TINY_SAM),
    ".venv/bin/python tools/sweep_seeds.py configs/flmm_toy.yaml --seeds 0 1 2": Rule("ok", shrink=TINY_RUN),
    ".venv/bin/python tools/train.py configs/flmm_qwen2_5_vl_7b.yaml": Rule(
        "refuses", r"Qwen/Qwen2\.5-VL-7B"
    ),
}


# The READMEs with commands: the project's, then the data layout's.
READMES = ("README.md", "data/README.md")


def readme_commands() -> list[str]:
    """Lines of the READMEs' code blocks that are commands (`bash ...`, `.venv/bin/python ...`), in order,
    without trailing `# comments`, each once."""
    commands, in_block = [], False
    for readme in READMES:
        for line in (REPO_ROOT / readme).read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                in_block = not in_block
                continue
            if in_block and (line.startswith("bash ") or line.startswith(".venv/bin/python ")):
                commands.append(re.sub(r"\s+#.*$", "", line).strip())
    return list(dict.fromkeys(commands))


def as_run(command: str, scratch: Path) -> str:
    """The command with optional parts left out and placeholders made concrete."""
    command = re.sub(r"\s*\[[^\]]*\]", "", command)
    command = command.replace("/path/to/root", "data/synthetic")
    command = re.sub(r"--out DIR\b", f"--out {scratch / 'out_dir'}", command)
    return re.sub(r"--out FILE\b", f"--out {scratch / 'out_file.safetensors'}", command)


def _with_shrink(command: str, shrink: str) -> str:
    """`shrink` appended to every call of a `&&` chain but tools/test.py (which reads the checkpoint's)."""
    parts = command.split(" && ")
    return " && ".join(part if "tools/test.py" in part else f"{part} {shrink}" for part in parts)


def uses_the_main_run(command: str) -> bool:
    """Whether `command` reads what the main command made (its checkpoint, or the synthetic world under
    data/synthetic); such commands run after it, in its folder."""
    return any(part in command for part in ("runs/flmm_toy/", "data/synthetic/", "/path/to/root"))


def make_scratch(root: Path) -> Path:
    """`root` with the checkout's top-level entries linked, and empty `runs/` and `data/` of its own."""
    for entry in REPO_ROOT.iterdir():
        if entry.name not in {"runs", "data", ".git"}:
            (root / entry.name).symlink_to(entry)
    (root / "data").mkdir()
    return root


def _run(command: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_every_readme_command_has_a_rule_and_every_rule_a_command():
    commands = readme_commands()
    assert sorted(set(commands)) == sorted(RULES), (
        f"README commands without a rule: {sorted(set(commands) - set(RULES))}; "
        f"rules without a README command: {sorted(set(RULES) - set(commands))}"
    )


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == TEST_COMMAND
    assert TEST_COMMAND in readme_commands()


def _serve_and_fetch(command: str, cwd: Path) -> str:
    """Start the web demo, fetch its page, stop it; the page's HTML."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command} --port 0"], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            match = re.search(r"serving on (http://127\.0\.0\.1:\d+/)", line)
            if match:
                with urllib.request.urlopen(match[1], timeout=30) as response:
                    return response.read().decode()
            if not line and process.poll() is not None:
                break
        raise AssertionError(f"the web demo did not start: exit {process.poll()}")
    finally:
        process.terminate()  # the page was fetched: how the server stops is not the README's concern
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _run_all(commands: list[str], scratch: Path) -> None:
    """Run `commands` in order in `scratch`, each as its rule says; fail with every command that did not."""
    failures = []
    for command in commands:
        rule = RULES[command]
        if rule.expect == "setup":
            command = command.removeprefix(SETUP)
        elif rule.expect == "web":
            assert '"title":"flmm demo"' in _serve_and_fetch(as_run(command, scratch), scratch)
            continue
        run = as_run(command, scratch)
        if rule.shrink:
            run = _with_shrink(run, rule.shrink)
        result = _run(run, scratch)
        output = result.stdout + result.stderr
        if rule.expect == "refuses":
            if result.returncode != 2 or not re.search(rule.message, result.stderr):
                failures.append(f"{run}\n  expected exit 2 with /{rule.message}/, got {result.returncode}")
        elif result.returncode != 0:
            failures.append(f"{run}\n  exit {result.returncode}: {output[-2000:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_the_main_command_and_the_commands_that_use_its_run(tmp_path: Path):
    """The main command first, then in README order the commands that use its checkpoint or data."""
    commands = [c for c in readme_commands() if uses_the_main_run(c) and c != MAIN]
    assert MAIN in readme_commands() and commands
    _run_all([MAIN, *commands], make_scratch(tmp_path))


def test_the_other_readme_commands_run_as_written(tmp_path: Path):
    """Every other command (the test command aside: it is this very run), in README order, in a folder of
    its own, so that a second worker can run it beside the main command."""
    commands = [c for c in readme_commands() if c not in (MAIN, TEST_COMMAND) and not uses_the_main_run(c)]
    _run_all(commands, make_scratch(tmp_path))
