"""The frozen LMM's own answer to a question: its chat prompt and `generate()`, nothing added.

The prompt is the model's own chat template (`LMMAdapter.prompt`), its image placeholder expanded the
processor's way (`LMMAdapter.expand_prompt`), the model gets exactly `LMMAdapter.model_inputs`, and
decoding uses transformers' `generate` with the settings given, so the answer is the one the LMM alone
gives for the same image, prompt and settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flmm.lmm.adapter import LMMAdapter, LMMImage


@dataclass(frozen=True)
class GenerationSettings:
    """How the LMM decodes: greedy by default, or sampling with temperature / top-p from `seed`."""

    max_new_tokens: int = 64
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0

    def generate_kwargs(self) -> dict:
        """Keyword arguments of `generate` for these settings."""
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        kwargs: dict = {"max_new_tokens": self.max_new_tokens, "do_sample": self.sample, "num_beams": 1}
        if self.sample:
            if self.temperature <= 0 or not 0 < self.top_p <= 1:
                raise ValueError(
                    f"sampling needs temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}"
                )
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


def generation_inputs(adapter: LMMAdapter, image: LMMImage, prompt: str) -> dict[str, Any]:
    """`generate`'s keyword arguments for `prompt` (a chat prompt, `LMMAdapter.prompt`) about one image (its
    `lmm_image`): exactly `LMMAdapter.model_inputs`, `input_ids (1, S)` the prompt, less the position ids."""
    encoded = adapter.encode_text([""], [[]], [image], prompts=[prompt])
    inputs = adapter.model_inputs(encoded.input_ids, encoded.attention_mask, [image])
    inputs.pop("position_ids", None)  # generate() counts positions itself
    return inputs


def run_generate(adapter: LMMAdapter, inputs: dict[str, Any], settings: GenerationSettings, **outputs: Any):
    """The LMM's `generate(**inputs)` with `settings`; `outputs`: what else it returns (e.g.
    `output_hidden_states`, `return_dict_in_generate`), which does not change the tokens."""
    device = adapter.lmm.device
    # A private RNG stream: the same seed gives the same sample, and the caller's RNG does not move.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        return adapter.lmm.generate(**inputs, **settings.generate_kwargs(), **outputs)


def answer_text(adapter: LMMAdapter, new_ids: torch.Tensor) -> str:
    """The answer the generated ids `(T,)` spell: special tokens dropped, surrounding whitespace trimmed."""
    return adapter.processor.tokenizer.decode(new_ids, skip_special_tokens=True).strip()


@torch.no_grad()
def generate_answer(adapter: LMMAdapter, image: LMMImage, prompt: str, settings: GenerationSettings) -> str:
    """The LMM's answer to `prompt` (a chat prompt, `LMMAdapter.prompt`) about one image (its `lmm_image`)."""
    inputs = generation_inputs(adapter, image, prompt)
    output = run_generate(adapter, inputs, settings)
    return answer_text(adapter, output[0, inputs["input_ids"].shape[1] :])
