"""The step benchmark runs end to end and prints its table (its numbers are not asserted: no timed tests)."""

from __future__ import annotations

from tests.conftest import load_tool


def test_benchmark_prints_one_row_per_capture_mode(capsys):
    load_tool("benchmark_step").main(["--preset", "toy", "--device", "cpu", "--batch", "1", "--phrases", "1",
                                      "--repeats", "1"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| eager") or line.startswith("| hooked")]
    assert len(rows) == 2
    assert all(len(row.split("|")) == 7 for row in rows)
