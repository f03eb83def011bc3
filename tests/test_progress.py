"""Progress without a terminal: plain lines at a steady cadence, with step, rate, elapsed and ETA."""

from __future__ import annotations

import io

from flmm.progress import ProgressLine, format_duration, plain_lines


def test_a_log_file_is_not_a_terminal():
    assert plain_lines(io.StringIO())


def test_durations_read_as_hours_minutes_seconds():
    assert format_duration(3725.2) == "1:02:05"
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(-3) == "0:00:00"


def test_lines_come_every_n_steps_and_at_the_last_one():
    stream = io.StringIO()
    line = ProgressLine("train", total=5, every=2, stream=stream)
    for step in range(1, 6):
        line.update(step, samples=8, detail="epoch 1/1 loss 0.5000")
    lines = stream.getvalue().splitlines()
    assert [text.split(" | ")[0] for text in lines] == [
        "train epoch 1/1 loss 0.5000 step 2/5",
        "train epoch 1/1 loss 0.5000 step 4/5",
        "train epoch 1/1 loss 0.5000 step 5/5",
    ]
    assert all("samples/s" in text and "elapsed" in text for text in lines)
    assert all("eta" in text for text in lines[:-1]) and "eta" not in lines[-1]


def test_a_resumed_loop_counts_its_rate_from_where_it_started():
    stream = io.StringIO()
    line = ProgressLine("train", total=100, every=10, start_step=90, stream=stream)
    line.update(95)
    assert stream.getvalue() == ""
    line.update(100)
    assert "step 100/100" in stream.getvalue()


def test_zero_cadence_prints_nothing():
    stream = io.StringIO()
    line = ProgressLine("pretrain", total=3, every=0, stream=stream)
    for step in range(1, 4):
        line.update(step)
    assert stream.getvalue() == ""
