"""The optimisation loop both toy pretrainings share: AdamW, linear warm-up then cosine, gradient clipping.

`run_steps` owns the loop and the progress bar; each pretraining passes a function computing one step's
loss (drawing its own batch), so the LLaVA and SAM recipes differ only in what a step is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from flmm.progress import ProgressLine, plain_lines

PLAIN_EVERY = 100


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def run_steps(
    parameters: Iterable[torch.nn.Parameter],
    step_loss: Callable[[], torch.Tensor],
    recipe,
    desc: str,
    progress: bool,
) -> list[tuple[int, float]]:
    """`recipe.steps` AdamW steps (`lr`, `weight_decay`, `warmup_steps`, `grad_clip` from the recipe) on the
    scalar loss `step_loss()` returns (a step of `recipe.batch_size` scenes); the (step, loss) curve every 10
    steps and at the last.

    `progress`: a bar on a terminal, else a plain line every `PLAIN_EVERY` steps (`flmm.progress`)."""
    parameters = list(parameters)
    optimizer = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, recipe.steps, recipe.warmup_steps)
    )
    curve, running = [], None
    lines = progress and plain_lines()
    bar = tqdm(range(recipe.steps), desc=desc, disable=not progress or lines)
    line = ProgressLine(desc, recipe.steps, PLAIN_EVERY if lines else 0)
    for step in bar:
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, recipe.grad_clip)
        optimizer.step()
        schedule.step()
        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.set_postfix(loss=f"{running:.3f}")
        line.update(step + 1, recipe.batch_size, f"loss {running:.3f}")
        if step % 10 == 0 or step == recipe.steps - 1:
            curve.append((step, value))
    return curve
