"""The one adapter boundary for frozen LMMs: everything but what a family declares is shared here.

An adapter wraps a transformers model (loaded from a hub id / folder, or passed in already built), keeps it
frozen (no parameter requires grad, eval mode always, forward under `torch.no_grad`), prompts it with its
own chat template, tokenises texts with per-token phrase ids, runs it with attention capture and returns
per-phrase attention to the image tokens and hidden states (`LMMOutput`).

A family (one file under `flmm/lmm/families/`) declares only what differs: `model_class`, where the
softmax attention modules are (`attention_modules`), its image path (`image_transform`, which also says
where the image sits in the grid's frame), how image tokens map to the image (`layout`), how the prompt's
image placeholder expands (`image_text`), and the image and extra inputs of the forward (`vision_inputs`,
`extra_inputs`). `model_inputs` returns exactly the keyword arguments the frozen model receives.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin

from flmm.errors import ConfigError
from flmm.lmm.capture import (
    AttentionRecorder,
    capture_implementation,
    reduce_rows,
    select_rows,
    without_autocast,
)
from flmm.lmm.layout import GridMeta, ImageLayout, check_view_counts, raster_cells
from flmm.lmm.loading import load_pretrained, load_processor, resolve_dtype, weights_source
from flmm.lmm.plan import BatchPlan, plan_batch, position_ids_from_mask, text_token_features
from flmm.lmm.text import DESCRIBE, EncodedText, Span, chat_prompt, check_spans, encode_prompts, join_prompt

CAPTURE_MODES = ("eager", "hooked")

# One sample's image as the model takes it: the family's tensors (pixel_values, image_grid_thw, ...).
LMMImage = dict[str, torch.Tensor]


@dataclass
class LMMOutput:
    """Per-phrase features of one batch; P = phrases of all samples, ordered by (sample, phrase index).

    token_attention: `(P, C, N_max)` float32, per phrase the mean over its tokens of the attention rows at
        its sample's image-token positions, in sequence order (zero after the sample's N_b tokens);
        C = attention layers x heads, channel = layer * H + head. Raw probabilities.
    attention: `(P, V * C, gh, gw)` float32, `token_attention` placed on the views of each sample's
        `ImageLayout`, resized to the adapter's grid and stacked on channels (view-major).
    phrase_batch_index: `(P,)` long, the sample of each phrase.
    hidden_states: `(P, T_max, L, D)` float32, the phrase tokens' outputs of the L decoder layers (the
        embedding output is not included; the last layer's entry is after the final norm, as transformers
        returns it), zero where `hidden_mask` is False.
    hidden_mask: `(P, T_max)` bool, True on the phrase's tokens.
    grid: `GridMeta` (grid size, L, H, channels, per-sample layouts).
    text_hidden, text_token_mask, text_phrase_ids: `(B, S_t, L, D)` / `(B, S_t)` / `(B, S_t)` for every text
        token (zero-padded; phrase -1 for none), only when `forward` was given `text_mask`; else None.
    """

    token_attention: torch.Tensor
    attention: torch.Tensor
    phrase_batch_index: torch.Tensor
    hidden_states: torch.Tensor
    hidden_mask: torch.Tensor
    grid: GridMeta
    text_hidden: torch.Tensor | None = None
    text_token_mask: torch.Tensor | None = None
    text_phrase_ids: torch.Tensor | None = None


class LMMAdapter(nn.Module):
    """A frozen LMM -> per-phrase attention maps and hidden states.

    Args:
        model: hub id or local folder (loaded with `from_pretrained`; weights missing -> MissingWeightsError),
            or an already built model of `model_class`.
        capture: "hooked" (the decoder keeps the family's plain kernel, `plain_attention`; phrase rows are
            recomputed from the q/k it receives) or "eager" (transformers' eager attention, probabilities
            read from `outputs.attentions`). The text attention implementation is set here; the vision tower
            keeps its own.
        torch_dtype: dtype to load in ("float32", "bfloat16", ...); default float32 when loading, the model's
            own when wrapping a built model.
        processor: the model's processor; loaded with the model when `model` is a name.
        padding_side: "right" or "left", for `encode_text`.
        local_files_only: never download (also implied by HF_HUB_OFFLINE=1).
        revision: the hub revision (branch, tag or commit) of a hub id; default `main`. What was loaded is
            in `source` (`flmm.lmm.loading.weights_source`), which checkpoints record.
        describe: the user turn whose answer a grounded text is teacher-forced as.
    """

    model_class: ClassVar[type[PreTrainedModel]]
    # Views every sample's layout has (channels of the head = num_views x layers x heads).
    num_views: ClassVar[int] = 1
    # The kernel hooked capture runs under (transformers' name); "eager" where sdpa refuses the model.
    plain_attention: ClassVar[str] = "sdpa"
    # M-RoPE families compute their 3-D positions themselves; a 1-D `position_ids` would turn that off.
    computes_positions: ClassVar[bool] = False
    # Prompt for a processor without a chat template; "{question}" is replaced, `image_token` kept.
    fallback_template: ClassVar[str] = "USER: <image>\n{question} ASSISTANT:"
    # A system turn before every prompt (`prompt`); None: none given (the template's own default, if any).
    system_prompt: str | None = None
    # The prompt attends bidirectionally (a prefix-LM): hooked capture's causal recompute is exact for the
    # text after it, not guaranteed for the prompt's last row (the authors' emitting row of the first text
    # token; use eager capture where it matters).
    bidirectional_prompt: ClassVar[bool] = False

    def __init__(
        self,
        model: str | os.PathLike | PreTrainedModel,
        capture: str = "hooked",
        torch_dtype: str | torch.dtype | None = None,
        processor: ProcessorMixin | None = None,
        padding_side: str = "right",
        local_files_only: bool | None = None,
        revision: str | None = None,
        describe: str = DESCRIBE,
    ):
        super().__init__()
        if capture not in CAPTURE_MODES:
            raise ConfigError(f"capture: expected one of {CAPTURE_MODES}, got {capture!r}")
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        # A model built in memory has no weights files to identify.
        self.source: dict[str, str | None] | None = None
        if isinstance(model, PreTrainedModel):
            lmm = model if torch_dtype is None else model.to(resolve_dtype(torch_dtype))
        else:
            lmm, loaded = load_pretrained(
                self.model_class,
                model,
                resolve_dtype(torch_dtype or "float32"),
                local_files_only,
                # A given processor is kept (and no other loaded); else the family's loader builds one.
                self.load_processor if processor is None else (lambda source, offline: processor),
                revision,
            )
            processor = loaded
            self.source = weights_source(model, local_files_only, revision)
        if not isinstance(lmm, self.model_class):
            raise ConfigError(
                f"{type(self).__name__} wraps {self.model_class.__name__}, got {type(lmm).__name__}"
            )
        lmm.requires_grad_(False)
        lmm.eval()
        self.lmm = lmm
        self.processor = processor
        self.capture = capture
        self.padding_side = padding_side
        self.describe = describe
        self.check_model()
        modules = self.attention_modules()
        text = self.text_config()
        self.num_layers = len(modules)
        self.num_heads = text.num_attention_heads
        self.image_token_id = int(lmm.config.image_token_id)
        implementation = "eager" if capture == "eager" else capture_implementation(self.plain_attention)
        lmm.set_attn_implementation({self.text_config_key: implementation})
        self._recorder = AttentionRecorder(modules) if capture == "hooked" else None

    # ---- what a family declares -------------------------------------------------------------------------
    text_config_key: ClassVar[str] = "text_config"

    @classmethod
    def load_processor(cls, source: str, offline: bool) -> ProcessorMixin:
        """The processor of a checkpoint folder (`flmm.lmm.loading.load_processor` unless a family says)."""
        return load_processor(source, offline)

    def check_model(self) -> None:
        """Refuse a configuration the family's layout does not describe (ConfigError)."""

    def text_config(self) -> PretrainedConfig:
        return getattr(self.lmm.config, self.text_config_key)

    def attention_modules(self) -> list[nn.Module]:
        """The softmax self-attention module of every captured decoder layer, in depth order."""
        return [layer.self_attn for layer in self.lmm.model.language_model.layers]

    def image_transform(self):
        """Picklable `(H, W, 3)` uint8 -> `{"lmm_image": LMMImage, "pad_meta": {...}}` (the data layer's)."""
        raise NotImplementedError

    def layout(self, image: LMMImage) -> ImageLayout:
        """Where the image tokens of one sample fall (see `flmm.lmm.layout`); default one square grid of
        `tower_side` x `tower_side` tokens, row-major, over `pixel_values (3, s, s)` (the tower's input)."""
        size = self.lmm.config.vision_config.image_size
        if tuple(image["pixel_values"].shape) != (3, size, size):
            raise ValueError(
                f"pixel_values must be (3, {size}, {size}), got {tuple(image['pixel_values'].shape)}"
            )
        side = self.tower_side
        return ImageLayout(raster_cells(side, side), ((side, side),))

    def image_text(self, layout: ImageLayout, image: LMMImage) -> str:
        """What the prompt's one `image_token` becomes for this image (the processor's own expansion)."""
        return self.image_token * layout.num_tokens

    def vision_inputs(self, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        """The image keyword arguments of the model's forward for a batch (on the model's device); default
        the images' `pixel_values` stacked, `(B, ...)`."""
        pixels = torch.stack([image["pixel_values"] for image in images])
        return {"pixel_values": pixels.to(device=self.lmm.device, dtype=self.lmm.dtype)}

    def extra_inputs(self, input_ids: torch.Tensor, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        """Other keyword arguments the model needs (e.g. Gemma 3's token_type_ids)."""
        return {}

    @property
    def tower_side(self) -> int:
        """Patches per side of the vision tower's square input (`image_size / patch_size`)."""
        vision = self.lmm.config.vision_config
        return vision.image_size // vision.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        """(gh, gw) of the attention maps the head gets; default the tower's square patch grid."""
        return (self.tower_side, self.tower_side)

    # ---- shared ------------------------------------------------------------------------------------------
    @property
    def image_token(self) -> str:
        """The placeholder the chat template writes for an image, which `image_text` expands."""
        return self._processor().image_token

    @property
    def channels(self) -> int:
        """C of the head's input `(P, C, gh, gw)`: views x captured layers x heads."""
        return self.num_views * self.num_layers * self.num_heads

    def train(self, mode: bool = True) -> LMMAdapter:
        """Switch the adapter's own mode; the frozen LMM stays in eval mode regardless."""
        super().train(mode)
        self.lmm.eval()
        return self

    def prompt(self, question: str | None = None) -> str:
        """One user turn (the image, then `question`; default `describe`) and the assistant turn's start, in
        the model's chat template (its fallback template when the processor has none), after a system turn
        when `system_prompt` is set (the demo's --system-prompt)."""
        return chat_prompt(
            self._processor(),
            question or self.describe,
            self.image_token,
            self.fallback_template,
            self.system_prompt,
        )

    def expand_prompt(self, prompt: str, image: LMMImage) -> str:
        """`prompt` with its one image placeholder expanded for `image`: tokenizing it gives the very
        `input_ids` the model's processor makes."""
        if prompt.count(self.image_token) != 1:
            raise ConfigError(f"a prompt must contain {self.image_token!r} exactly once: {prompt!r}")
        return prompt.replace(self.image_token, self.image_text(self.layout(image), image))

    def encode_text(
        self,
        texts: Sequence[str],
        phrase_spans: Sequence[Sequence[Span]],
        images: Sequence[LMMImage],
        padding_side: str | None = None,
        prompts: Sequence[str] | None = None,
    ) -> EncodedText:
        """Prompt + text per sample, tokenized with the image placeholder expanded for its image.

        texts: B strings; phrase_spans: per sample, char spans (start, end) into its text; images: B
        `LMMImage`s as `image_transform` makes them. prompts: B prompts to put before the texts (default
        `prompt()`, the description turn): with a question's prompt and the model's answer as text, the
        spans point into the answer. Returns `(B, S)` tensors.
        """
        if not len(texts) == len(phrase_spans) == len(images):
            raise ValueError(f"{len(texts)} texts, {len(phrase_spans)} span lists, {len(images)} images")
        prompts = [self.prompt()] * len(texts) if prompts is None else list(prompts)
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
        spans, full = [], []
        for sample, (text, sample_spans) in enumerate(zip(texts, phrase_spans, strict=True)):
            if self.image_token in text:
                raise ValueError(f"sample {sample}: the text contains the image token {self.image_token!r}")
            spans.append(check_spans(text, sample_spans, sample))
            full.append(join_prompt(self.expand_prompt(prompts[sample], images[sample]), text))
        tokenizer = self._processor().tokenizer
        return encode_prompts(tokenizer, full, list(texts), spans, padding_side or self.padding_side)

    def encode(
        self,
        images: Sequence[Any],
        texts: Sequence[str],
        phrase_spans: Sequence[Sequence[Span]],
        padding_side: str | None = None,
        prompts: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """RGB images (PIL or `(H, W, 3)` uint8 arrays) + texts -> the keyword arguments of `forward`, the
        images through the family's one image path (`image_transform`)."""
        transform = self.image_transform()
        lmm_images = [
            transform(np.asarray(image.convert("RGB") if hasattr(image, "convert") else image))["lmm_image"]
            for image in images
        ]
        encoded = self.encode_text(texts, phrase_spans, lmm_images, padding_side, prompts)
        return {
            "input_ids": encoded.input_ids,
            "attention_mask": encoded.attention_mask,
            "phrase_ids": encoded.phrase_ids,
            "images": lmm_images,
        }

    def model_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: Sequence[LMMImage]
    ) -> dict[str, Any]:
        """Exactly the keyword arguments the frozen model's forward receives (also `generate`'s, less the
        position ids), on its device."""
        device = self.lmm.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if not self.computes_positions:
            # Positions over real tokens only, so a sample's positions do not depend on its padding.
            inputs["position_ids"] = position_ids_from_mask(attention_mask)
        return {**inputs, **self.vision_inputs(images), **self.extra_inputs(input_ids, images)}

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        phrase_ids: torch.Tensor,
        images: Sequence[LMMImage],
        text_mask: torch.Tensor | None = None,
    ) -> LMMOutput:
        """One frozen forward pass -> `LMMOutput` (shapes there). Inputs as `encode_text` returns them.

        text_mask: `(B, S)` bool (`EncodedText.text_mask`); given, the output also holds the hidden states
        of every text token (for a keyword selector), not only of the phrase tokens.
        """
        # In the model's own dtype whatever the trainer's autocast: training sees what inference sees.
        with without_autocast(self.lmm.device):
            inputs = self.model_inputs(input_ids, attention_mask, images)
            input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
            phrase_ids = phrase_ids.to(input_ids.device)
            layouts = [self.layout(image) for image in images]
            check_view_counts(layouts, self.num_views)
            plan = plan_batch(input_ids, attention_mask, phrase_ids, self.image_token_id, layouts)
            inputs.update(use_cache=False, output_hidden_states=True, logits_to_keep=1)
            maps, outputs = self._run(inputs, plan)
            per_phrase = torch.stack(maps, dim=2).flatten(2, 3)[plan.phrase_batch_index, plan.phrase_local]
            # A sample with fewer image tokens than N_max has its image positions padded with others.
            counts = torch.tensor([layout.num_tokens for layout in layouts], device=per_phrase.device)
            columns = torch.arange(per_phrase.shape[-1], device=per_phrase.device)
            per_phrase = per_phrase * (columns < counts[plan.phrase_batch_index, None])[:, None, :]
            grid = self.grid_size
            attention = torch.cat(
                [
                    layout.to_grid(per_phrase[plan.phrase_batch_index == b], grid)
                    for b, layout in enumerate(layouts)
                ]
            )
            hidden = torch.stack(
                [h[plan.phrase_batch_index[:, None], plan.phrase_tokens] for h in outputs.hidden_states[1:]],
                dim=2,
            )
            hidden = hidden.float() * plan.phrase_token_mask[:, :, None, None]
            text = (
                {}
                if text_mask is None
                else text_token_features(
                    outputs.hidden_states[1:], text_mask.to(input_ids.device), phrase_ids
                )
            )
            meta = GridMeta(grid, self.num_layers, self.num_heads, attention.shape[1], tuple(layouts))
            return LMMOutput(
                per_phrase, attention, plan.phrase_batch_index, hidden, plan.phrase_token_mask, meta, **text
            )

    def _run(self, inputs: dict[str, Any], plan: BatchPlan) -> tuple[list[torch.Tensor], Any]:
        """The model's forward with capture; per-layer maps `(B, P_max, H, N)` and the model outputs."""
        if self._recorder is None:
            outputs = self.lmm(**inputs, output_attentions=True)
            attentions = [a for a in outputs.attentions if a is not None]
            maps = [
                reduce_rows(select_rows(probs, plan.request.query_pos), plan.request) for probs in attentions
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
