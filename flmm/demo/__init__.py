"""Reasoning segmentation: ask the frozen LMM a question, get its own answer and the masks of what it says.

`Demo.from_checkpoint(path)` (trained head) or `Demo.from_config(path)` (training-free attend-and-segment)
loads the models; `demo.run(image, question, phrases=..., settings=...)` returns a `DemoResult`;
`flmm.demo.output` writes overlay.png / result.json and the Kosmos-2 / GLaMM text forms;
`flmm.demo.gradio_app` serves the same as a Gradio app on localhost. Entry point: tools/demo.py.
"""

from flmm.demo.answer import GenerationSettings, generate_answer
from flmm.demo.pipeline import Demo, DemoResult, PhraseResult

__all__ = [
    "Demo",
    "DemoResult",
    "GenerationSettings",
    "PhraseResult",
    "generate_answer",
]
