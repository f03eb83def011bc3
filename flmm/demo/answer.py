"""The frozen LMM's own answer to a question: its chat prompt and `generate()`, nothing added.

The prompt is built exactly as the model's processor builds it (`LMMAdapter.expand_prompts` expands the
image token the processor's way), and decoding uses transformers' `generate` with the settings given, so
the answer is the one the LMM alone gives for the same image, prompt and settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flmm.lmm.base import LMMAdapter

# LLaVA-1.5's conversation format, as in the adapter's description prompt.
QUESTION_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"


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


def question_prompt(question: str, image_token: str, template: str = QUESTION_TEMPLATE) -> str:
    """The chat prompt of a question (image token included); ValueError for an empty question."""
    question = question.strip()
    if not question:
        raise ValueError("the question is empty")
    if image_token in question:
        raise ValueError(f"the question must not contain the image token {image_token!r}")
    return template.replace("{question}", question)


@torch.no_grad()
def generate_answer(
    adapter: LMMAdapter,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor | None,
    prompt: str,
    settings: GenerationSettings,
) -> str:
    """The LMM's answer to `prompt` about one image (`pixel_values` from its processor, batch of 1)."""
    tokenizer = adapter.processor.tokenizer
    inputs = tokenizer(adapter.expand_prompts(pixel_values, image_sizes, [prompt]), return_tensors="pt")
    device = adapter.lmm.device
    vision = adapter.vision_inputs(pixel_values.to(device=device, dtype=adapter.lmm.dtype), image_sizes)
    # A private RNG stream: the same seed gives the same sample, and the caller's RNG does not move.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        output = adapter.lmm.generate(
            input_ids=inputs["input_ids"].to(device),
            attention_mask=inputs["attention_mask"].to(device),
            **vision,
            **settings.generate_kwargs(),
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
