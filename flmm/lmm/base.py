"""The one adapter interface for frozen LLaVA-style LMMs; everything but the image-token layout is shared.

An adapter wraps a transformers model (loaded from a hub id / folder, or passed in already built), keeps it
frozen (no parameter requires grad, eval mode always, forward under `torch.no_grad`), encodes prompts with
the model's own processor, and turns one forward pass into per-phrase attention maps and hidden states
(`LMMOutput`). Subclasses only say how image tokens map to a grid (`grid_layouts`) and what the vision
inputs of the model are (`vision_inputs`, `processor_image_inputs`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel, ProcessorMixin

from flmm.errors import ConfigError
from flmm.lmm.capture import CAPTURE_ATTN_IMPLEMENTATION, AttentionRecorder, reduce_rows, select_rows
from flmm.lmm.grid import GridLayout, GridMeta
from flmm.lmm.loading import load_pretrained, resolve_dtype
from flmm.lmm.plan import BatchPlan, plan_batch, position_ids_from_mask, positions_first
from flmm.lmm.text import DEFAULT_PROMPT_TEMPLATE, EncodedText, Span, check_spans, encode_prompts

CAPTURE_MODES = ("eager", "hooked")


@dataclass
class LMMOutput:
    """Per-phrase features of one batch; P = phrases of all samples, ordered by (sample, phrase index).

    attention: `(P, C, gh, gw)` float32, the mean over the phrase's tokens of their attention rows restricted
        to the image tokens; C = L*H (LLaVA-1.5) or 2*L*H (LLaVA-NeXT), channel = layer * H + head (+ L*H for
        the any-res block). Raw probabilities: not normalised over the grid.
    phrase_batch_index: `(P,)` long, the sample of each phrase.
    hidden_states: `(P, T_max, L, D)` float32, the phrase tokens' outputs of the L decoder layers (the
        embedding output is not included; the last layer's entry is after the final norm, as transformers
        returns it), zero where `hidden_mask` is False.
    hidden_mask: `(P, T_max)` bool, True on the phrase's tokens.
    grid: `GridMeta` (grid size, L, H, channels, per-sample layouts, which frame the grid covers).
    text_hidden: `(B, S_t, L, D)` float32, the same layer outputs for every token of each sample's text (in
        order, zero-padded to S_t), only when `forward` was given `text_mask`; else None.
    text_token_mask: `(B, S_t)` bool, True on real text tokens; None without `text_mask`.
    text_phrase_ids: `(B, S_t)` long, the phrase of each text token (-1: none, and on padding); None
        without `text_mask`.
    """

    attention: torch.Tensor
    phrase_batch_index: torch.Tensor
    hidden_states: torch.Tensor
    hidden_mask: torch.Tensor
    grid: GridMeta
    text_hidden: torch.Tensor | None = None
    text_token_mask: torch.Tensor | None = None
    text_phrase_ids: torch.Tensor | None = None


class LMMAdapter(nn.Module, ABC):
    """A frozen LLaVA-style LMM -> per-phrase attention maps and hidden states.

    Args:
        model: hub id or local folder (loaded with `from_pretrained`, weights missing -> MissingWeightsError),
            or an already built model of `model_class`.
        capture: "hooked" (the text decoder runs transformers' sdpa attention, unchanged; phrase rows are
            recomputed from the q/k it receives) or "eager" (transformers' eager attention, full
            probabilities read from `outputs.attentions`). Either way the text attention implementation of
            the model is set here; the vision tower keeps its own.
        torch_dtype: dtype to load in ("float32", "bfloat16", ...); default float32 when loading, the model's
            own when wrapping a built model.
        prompt_template: text before the grounded text; must hold the processor's image token once.
        processor: the model's processor; loaded with the model when `model` is a name.
        padding_side: "right" or "left", for `encode_text`.
        local_files_only: never download (also implied by HF_HUB_OFFLINE=1).
    """

    model_class: ClassVar[type[PreTrainedModel]]
    frame: ClassVar[str]
    # Grids concatenated on channels: C = grid_blocks * L * H (2 for any-res: base + any-res grid).
    grid_blocks: ClassVar[int]

    def __init__(
        self,
        model: str | os.PathLike | PreTrainedModel,
        capture: str = "hooked",
        torch_dtype: str | torch.dtype | None = None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        processor: ProcessorMixin | None = None,
        padding_side: str = "right",
        local_files_only: bool | None = None,
    ):
        super().__init__()
        if capture not in CAPTURE_MODES:
            raise ConfigError(f"capture: expected one of {CAPTURE_MODES}, got {capture!r}")
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        if isinstance(model, PreTrainedModel):
            lmm = model if torch_dtype is None else model.to(resolve_dtype(torch_dtype))
        else:
            lmm, loaded = load_pretrained(
                self.model_class, model, resolve_dtype(torch_dtype or "float32"), local_files_only
            )
            processor = processor or loaded
        if not isinstance(lmm, self.model_class):
            raise ConfigError(
                f"{type(self).__name__} wraps {self.model_class.__name__}, got {type(lmm).__name__}"
            )
        if lmm.config.vision_feature_select_strategy != "default":
            raise ConfigError(
                "vision_feature_select_strategy must be 'default' (CLS dropped, one token per patch), got "
                f"{lmm.config.vision_feature_select_strategy!r}"
            )
        lmm.requires_grad_(False)
        lmm.eval()
        self.lmm = lmm
        self.processor = processor
        self.capture = capture
        self.prompt_template = prompt_template
        self.padding_side = padding_side
        text_config = lmm.config.text_config
        self.num_layers = text_config.num_hidden_layers
        self.num_heads = text_config.num_attention_heads
        self.image_token_id = lmm.config.image_token_id
        implementation = "eager" if capture == "eager" else CAPTURE_ATTN_IMPLEMENTATION
        lmm.set_attn_implementation({"text_config": implementation})
        layers = lmm.model.language_model.layers
        self._recorder = (
            AttentionRecorder([layer.self_attn for layer in layers]) if capture == "hooked" else None
        )

    @abstractmethod
    def grid_layouts(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> list[GridLayout]:
        """One `GridLayout` per sample of the batch."""

    @abstractmethod
    def vision_inputs(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> dict[str, Any]:
        """The image keyword arguments of the model's forward."""

    @abstractmethod
    def processor_image_inputs(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> dict:
        """What the processor's `replace_image_token` reads to count a sample's image tokens."""

    def train(self, mode: bool = True) -> LMMAdapter:
        """Switch the adapter's own mode; the frozen LMM stays in eval mode regardless."""
        super().train(mode)
        self.lmm.eval()
        return self

    def expand_prompts(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        prompt_templates: Sequence[str] | None = None,
    ) -> list[str]:
        """Per sample, its prompt template with the image token expanded to the image's token count.

        prompt_templates: B templates holding the processor's image token once (e.g. a question in the
        model's chat format); default `prompt_template` for every sample. Tokenizing the result gives the
        very `input_ids` the model's processor makes for this prompt and image.
        """
        processor = self._processor()
        image_token = processor.image_token
        templates = (
            [self.prompt_template] * len(pixel_values) if prompt_templates is None else prompt_templates
        )
        if len(templates) != len(pixel_values):
            raise ValueError(f"{len(templates)} prompt templates for {len(pixel_values)} images")
        layouts = self.grid_layouts(pixel_values, image_sizes)
        image_inputs = self.processor_image_inputs(pixel_values, image_sizes)
        prompts = []
        for sample, template in enumerate(templates):
            if template.count(image_token) != 1:
                raise ConfigError(
                    f"a prompt template must contain {image_token!r} exactly once: {template!r}"
                )
            replacement = processor.replace_image_token(image_inputs, sample)
            expanded, expected = replacement.count(image_token), layouts[sample].num_tokens
            if expanded != expected:
                raise ConfigError(
                    f"the processor expands {image_token!r} to {expanded} tokens but the model yields "
                    f"{expected} image features; check the processor's patch_size, "
                    "vision_feature_select_strategy and num_additional_image_tokens (1 for CLIP towers)"
                )
            prompts.append(template.replace(image_token, replacement))
        return prompts

    def encode_text(
        self,
        texts: Sequence[str],
        phrase_spans: Sequence[Sequence[Span]],
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        padding_side: str | None = None,
        prompt_templates: Sequence[str] | None = None,
    ) -> EncodedText:
        """Prompt + text per sample, tokenized with the processor's image-token expansion for these images.

        texts: B strings; phrase_spans: per sample, char spans (start, end) into its text. pixel_values /
        image_sizes: the preprocessed images, as the model will get them. prompt_templates: B prompts to
        put before the texts instead of `prompt_template` (see `expand_prompts`): with a question's prompt
        and the model's answer as text, the spans point into the answer. Returns `(B, S)` tensors.
        """
        processor = self._processor()
        if not len(texts) == len(phrase_spans) == len(pixel_values):
            raise ValueError(
                f"{len(texts)} texts, {len(phrase_spans)} span lists, {len(pixel_values)} images"
            )
        spans = []
        for sample, (text, sample_spans) in enumerate(zip(texts, phrase_spans, strict=True)):
            if processor.image_token in text:
                raise ValueError(
                    f"sample {sample}: the text contains the image token {processor.image_token!r}: {text!r}"
                )
            spans.append(check_spans(text, sample_spans, sample))
        expanded = self.expand_prompts(pixel_values, image_sizes, prompt_templates)
        prompts = [f"{prompt} {text}" for prompt, text in zip(expanded, texts, strict=True)]
        return encode_prompts(processor.tokenizer, prompts, texts, spans, padding_side or self.padding_side)

    def encode(
        self,
        images: Sequence[Any],
        texts: Sequence[str],
        phrase_spans: Sequence[Sequence[Span]],
        padding_side: str | None = None,
        prompt_templates: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Raw images (PIL / arrays) + texts -> the keyword arguments of `forward`, all with the processor."""
        image_inputs = self._processor().image_processor(list(images), return_tensors="pt")
        pixel_values, image_sizes = image_inputs["pixel_values"], image_inputs.get("image_sizes")
        encoded = self.encode_text(
            texts, phrase_spans, pixel_values, image_sizes, padding_side, prompt_templates
        )
        batch = {
            "input_ids": encoded.input_ids,
            "attention_mask": encoded.attention_mask,
            "phrase_ids": encoded.phrase_ids,
            "pixel_values": pixel_values,
        }
        if image_sizes is not None:
            batch["image_sizes"] = image_sizes
        return batch

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        phrase_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> LMMOutput:
        """One frozen forward pass -> `LMMOutput` (shapes there). Inputs as `encode` returns them.

        text_mask: `(B, S)` bool (`EncodedText.text_mask`); given, the output also holds the hidden states
        of every text token (for a keyword selector), not only of the phrase tokens.
        """
        device = self.lmm.device
        input_ids, attention_mask, phrase_ids = (
            t.to(device) for t in (input_ids, attention_mask, phrase_ids)
        )
        layouts = self.grid_layouts(pixel_values, image_sizes)
        plan = plan_batch(input_ids, attention_mask, phrase_ids, self.image_token_id, layouts)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids_from_mask(attention_mask),
            "use_cache": False,
            "output_hidden_states": True,
            "logits_to_keep": 1,  # the vocabulary logits are not used; skip the S x vocab projection
            **self.vision_inputs(pixel_values.to(device=device, dtype=self.lmm.dtype), image_sizes),
        }
        maps, outputs = self._run(inputs, plan)
        per_phrase = torch.stack(maps, dim=2).flatten(2, 3)[plan.phrase_batch_index, plan.phrase_local]
        attention = torch.cat(
            [layout.to_grid(per_phrase[plan.phrase_batch_index == b]) for b, layout in enumerate(layouts)]
        )
        hidden = torch.stack(
            [h[plan.phrase_batch_index[:, None], plan.phrase_tokens] for h in outputs.hidden_states[1:]],
            dim=2,
        )
        hidden = hidden.float() * plan.phrase_token_mask[:, :, None, None]
        text = {} if text_mask is None else self._text_tokens(outputs, text_mask.to(device), phrase_ids)
        grid = GridMeta(
            size=layouts[0].base_hw,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            channels=attention.shape[1],
            layouts=tuple(layouts),
            frame=self.frame,
        )
        return LMMOutput(attention, plan.phrase_batch_index, hidden, plan.phrase_token_mask, grid, **text)

    @staticmethod
    def _text_tokens(
        outputs: Any, text_mask: torch.Tensor, phrase_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Hidden states `(B, S_t, L, D)`, mask and phrase ids of the text tokens (`text_mask (B, S)`)."""
        counts = text_mask.sum(dim=1)
        width = int(counts.max()) if counts.numel() else 0
        token_mask = torch.arange(width, device=text_mask.device)[None, :] < counts[:, None]
        positions = positions_first(text_mask, width).masked_fill(~token_mask, 0)
        rows = torch.arange(len(text_mask), device=text_mask.device)[:, None]
        hidden = torch.stack([h[rows, positions] for h in outputs.hidden_states[1:]], dim=2)
        return {
            "text_hidden": hidden.float() * token_mask[:, :, None, None],
            "text_token_mask": token_mask,
            "text_phrase_ids": phrase_ids.gather(1, positions).masked_fill(~token_mask, -1),
        }

    def _run(self, inputs: dict[str, Any], plan: BatchPlan) -> tuple[list[torch.Tensor], Any]:
        """The model's forward with capture; per-layer maps `(B, P_max, H, N)` and the model outputs."""
        if self._recorder is None:
            outputs = self.lmm(**inputs, output_attentions=True)
            maps = [
                reduce_rows(select_rows(probs, plan.request.query_pos), plan.request)
                for probs in outputs.attentions
            ]
            return maps, outputs
        with self._recorder.record(plan.request) as maps:
            outputs = self.lmm(**inputs)
        if any(layer_map is None for layer_map in maps):
            raise RuntimeError(
                "hooked capture saw no attention call for some decoder layers: the text model does not "
                "dispatch through transformers' AttentionInterface; use capture='eager'"
            )
        return maps, outputs

    def _processor(self) -> ProcessorMixin:
        if self.processor is None:
            raise ConfigError(
                f"{type(self).__name__} was built around a model without processor; pass processor="
            )
        return self.processor
