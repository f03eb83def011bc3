"""PaliGemma 1 and 2 (`PaliGemmaForConditionalGeneration`): one squashed square grid, image first, prefix-LM.

Image. The SigLIP image processor resizes the whole image to s x s (224 / 448 / 896) without keeping its
aspect; the tower cuts it into (s / 14)^2 patches, one decoder token each, row-major (16^2, 32^2, 64^2).
The maps are that grid stretched over the whole image (no padding).

Sequence. `<image>` x N, then `<bos>`, the prompt (a task prefix such as "caption en"; PaliGemma has no chat
template), "\\n", then the suffix (`processing_paligemma.py`: the processor inserts the BOS after the last
image placeholder and closes the prefix with "\\n"). So the prompt's one `<image>` expands to N `<image>`s
and the BOS, and the prompt ends with the "\\n" separator.

Prefix-LM. `token_type_ids` 0 marks the prefix (image + prompt), which attends bidirectionally, 1 the
suffix, which attends causally. The text to ground is teacher-forced as the suffix: that is how the model
reads an answer (`processor(text=prompt, suffix=answer)` gives the same ids and types, plus a closing EOS).
Phrase tokens are then suffix tokens, whose attention rows are plainly causal (every prefix key comes
before them): the hooked capture's causal recompute is exact for them. The suffix is found from the ids
alone, as what follows the first newline token after the image tokens; a question must hold no newline.

Positions are 1-indexed, as the model counts them itself and as `generate` passes them.

Decoders. PaliGemma 1: Gemma (sdpa). PaliGemma 2: Gemma 2 with attention soft-capping (50) and sliding
windows on alternating layers; sdpa refuses soft-capping, so its plain kernel is eager (`plain_attention`),
which hooked capture must wrap (capture="eager" works as is).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PaliGemmaForConditionalGeneration

from flmm.data.transforms import LMMInputs, ProcessorTransform
from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter, LMMImage
from flmm.lmm.layout import ImageLayout
from flmm.registry import LMM_ADAPTERS

# Gemma's vocabulary has one token per run of up to 31 newlines; a separator merged into a run still counts.
_MAX_NEWLINE_RUN = 31


@LMM_ADAPTERS.register_module()
class PaliGemmaAdapter(LMMAdapter):
    """Frozen `PaliGemmaForConditionalGeneration` (PaliGemma 1 and 2): per image `pixel_values (3, s, s)`;
    the head's grid is the model's own (s / 14) x (s / 14) patch grid."""

    model_class = PaliGemmaForConditionalGeneration
    fallback_template = "<image>{question}\n"
    bidirectional_prompt = True

    @property
    def plain_attention(self) -> str:  # type: ignore[override]  # per checkpoint: PaliGemma 2 soft-caps
        softcap = getattr(self.text_config(), "attn_logit_softcapping", None)
        return "sdpa" if softcap is None else "eager"

    def check_model(self) -> None:
        side = self.tower_side
        tokens = getattr(self.text_config(), "num_image_tokens", side * side)
        if tokens != side * side:
            raise ConfigError(f"num_image_tokens {tokens} is not the {side} x {side} patch grid")
        if self.processor is not None:
            seq_length = getattr(self.processor, "image_seq_length", side * side)
            if seq_length != side * side:
                raise ConfigError(f"the processor's image_seq_length {seq_length} is not {side} x {side}")
            self._newline_ids()  # the separator must be a token

    def prompt(self, question: str | None = None) -> str:
        """`<image>{question}\\n`; ValueError for a question holding a newline (it would end the prefix)."""
        if "\n" in (question or self.describe).strip():
            raise ValueError("a PaliGemma prompt must be one line: its newline ends the prefix")
        return super().prompt(question)

    def image_transform(self) -> LMMInputs:
        # pixel_values (3, s, s): the batch dimension of the one image removed.
        return LMMInputs(
            ProcessorTransform(self._processor().image_processor, batched_keys=("pixel_values",))
        )

    def image_text(self, layout: ImageLayout, image: LMMImage) -> str:
        """N image tokens, then the BOS the processor puts after the last image."""
        tokenizer = self._processor().tokenizer
        return self.image_token * layout.num_tokens + tokenizer.bos_token

    def extra_inputs(self, input_ids: torch.Tensor, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        """`token_type_ids (B, S)` long: 1 on the suffix, the tokens after the first newline token that
        follows the sample's image tokens; 0 on the prefix (all 0 when there is no such newline, e.g. a
        prompt alone, which is what `generate` continues)."""
        seq = torch.arange(input_ids.shape[1], device=input_ids.device)
        newline = torch.isin(input_ids, self._newline_ids().to(input_ids.device))
        last_image = torch.where(input_ids == self.image_token_id, seq, -1).amax(dim=1, keepdim=True)
        separators = newline & (seq[None, :] > last_image)
        first = separators.int().argmax(dim=1, keepdim=True)  # the first True (0 when none: masked below)
        separator = torch.where(separators.any(dim=1, keepdim=True), first, input_ids.shape[1])
        return {"token_type_ids": (seq[None, :] > separator).long()}

    def model_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: Sequence[LMMImage]
    ) -> dict[str, Any]:
        """The shared inputs with PaliGemma's 1-indexed positions (its forward counts from 1 when given
        none, and `generate` adds 1): the same positions give the model's own bits."""
        inputs = super().model_inputs(input_ids, attention_mask, images)
        inputs["position_ids"] = inputs["position_ids"] + 1
        return inputs

    def _newline_ids(self) -> torch.Tensor:
        """`(K,)` long: the tokenizer's newline-run tokens; ConfigError when it has none."""
        cached = getattr(self, "_newline_cache", None)
        if cached is not None:
            return cached
        tokenizer = self._processor().tokenizer
        ids = {tokenizer.convert_tokens_to_ids("\n" * run) for run in range(1, _MAX_NEWLINE_RUN + 1)}
        ids.discard(tokenizer.unk_token_id)
        ids.discard(None)
        if not ids:
            encoded = tokenizer("\n", add_special_tokens=False)["input_ids"]
            ids = set(encoded) if len(encoded) == 1 else set()
        if not ids:
            raise ConfigError("PaliGemma's tokenizer has no newline token: it separates prefix and suffix")
        self._newline_cache = torch.tensor(sorted(ids), dtype=torch.long)
        return self._newline_cache
