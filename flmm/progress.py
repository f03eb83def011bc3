"""Progress for runs without a terminal (nohup, SLURM, CI): plain lines at a steady cadence, not bars.

A progress bar written to a file is one line rewritten with carriage returns, or nothing at all; a log
needs whole lines. `ProgressLine` prints, every `every` steps and at the last one,

    train epoch 2/6 step 45/228 loss 0.7342 | 4.1 samples/s | elapsed 0:00:31 | eta 0:04:10

and the training, evaluation and pretraining loops use it whenever stdout is not a TTY (`plain_lines`).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def plain_lines(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stdout) is not a terminal, so progress must be written as plain lines."""
    stream = sys.stdout if stream is None else stream
    return not (hasattr(stream, "isatty") and stream.isatty())


def format_duration(seconds: float) -> str:
    """`3725.2` -> `"1:02:05"`."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLine:
    """Plain progress lines of one loop of `total` steps.

    Args:
        what: the loop's name, first on every line ("train", "test refcoco:val", "pretrain toy SAM").
        total: the step count at which the loop ends.
        every: print every `every` steps (and at `total`); 0 prints nothing.
        start_step: the step the loop starts from (a resumed run), so rates and the ETA count only the steps
            this process made.
        stream: where to print (default stdout, looked up at each line so redirections apply).
    """

    def __init__(self, what: str, total: int, every: int, start_step: int = 0, stream: TextIO | None = None):
        self.what = what
        self.total = int(total)
        self.every = int(every)
        self.start_step = int(start_step)
        self.stream = stream
        self.start_time = time.perf_counter()
        self.samples = 0

    def due(self, step: int) -> bool:
        """Whether `update(step)` prints a line."""
        return self.every > 0 and (step % self.every == 0 or step == self.total)

    def update(self, step: int, samples: int = 0, detail: str = "") -> None:
        """Step `step` (1-based: steps done) is done, having processed `samples` more samples."""
        self.samples += samples
        if not self.due(step):
            return
        elapsed = time.perf_counter() - self.start_time
        done = step - self.start_step
        parts = [f"{self.what} {detail + ' ' if detail else ''}step {step}/{self.total}"]
        if self.samples:
            parts.append(f"{self.samples / max(elapsed, 1e-9):.2f} samples/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if done > 0 and self.total > step:
            parts.append(f"eta {format_duration(elapsed / done * (self.total - step))}")
        print(" | ".join(parts), file=self.stream or sys.stdout, flush=True)
