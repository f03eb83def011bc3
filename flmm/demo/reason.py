"""Reasoning segmentation as the demo does it, as an evaluation predictor: answer first, then ground.

For every query of a batch (a ReasonSeg question or instruction) the frozen LMM answers, asked for a short
phrase, and the whole answer is grounded (the `answer` phrase source); the query's mask is that phrase's
mask (empty when the answer is). This scores the question -> answer -> mask path of `tools/demo.py`,
where the default evaluation teacher-forces the query itself as the phrase.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flmm.demo.answer import GenerationSettings
from flmm.demo.pipeline import Demo
from flmm.engine.evaluate import PhrasePredictions


class AnswerThenGround(nn.Module):
    """Predictor `batch -> PhrasePredictions` running `Demo.run(image, query)` per query.

    The demo's models are registered as children, so Lightning moves them to each process's device.
    """

    def __init__(self, demo: Demo, settings: GenerationSettings | None = None):
        super().__init__()
        self.adapter, self.head, self.selector, self.attend = (
            demo.adapter,
            demo.head,
            demo.selector,
            demo.attend,
        )
        self.demo, self.settings = demo, settings or GenerationSettings(max_new_tokens=16)

    def forward(self, batch: dict) -> PhrasePredictions:
        masks = []
        for image, queries in zip(batch["images"], batch["queries"], strict=True):
            array = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
            for query in queries:
                result = self.demo.run(array, query["expression"], settings=self.settings, source="answer")
                mask = np.zeros(array.shape[:2], dtype=bool)
                for phrase in result.phrases:
                    mask |= phrase.mask
                masks.append(torch.from_numpy(mask))
        return PhrasePredictions(masks)
