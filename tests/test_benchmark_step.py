"""The step benchmark runs end to end and prints its table (its numbers are not asserted: no timed tests)."""

from __future__ import annotations

from tests.conftest import load_tool


def test_benchmark_prints_one_row_per_capture_mode(capsys):
    load_tool("benchmark_step").main(["--preset", "toy", "--device", "cpu", "--batch", "1", "--phrases", "1",
                                      "--repeats", "1"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in lines if line.startswith("| ")}
    assert {"plain", "hooked", "eager"} <= set(rows)
    assert float(rows["plain"][2]) == 1.0  # the baseline of the ratio column
    assert all(float(rows[mode][1]) > 0 and float(rows[mode][3]) > 0 for mode in ("hooked", "eager"))
