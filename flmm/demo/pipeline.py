"""Ask, answer, choose phrases, ground them: the demo's pipeline around a frozen LMM.

1. The LMM answers the question with its own `generate()` (`flmm.demo.answer`).
2. Every answer token's attention to the image `(T, C, gh, gw)` and hidden states `(T, L, D)`, each text
   token captured as its own phrase, are recorded while the LMM generates the answer
   (`flmm.demo.decode_capture`: hooked capture on the decode steps) or, as the fallback (eager capture,
   families not checked for it, tokens that do not survive re-tokenizing, phrases not in the answer), come
   from one prefill over prompt + text. A phrase's attention is the mean of its tokens' rows, exactly what
   the adapter computes for a multi-token phrase, so phrases can be chosen afterwards (by the keyword
   selector, which reads the same hidden states) without another pass.
3. The chosen phrases are grounded by the trained head (U-Net + SAM refiner) or, training-free, by
   attend-and-segment. SAM's image embedding is computed once per image and kept for the next questions.

The image goes through the adapter's one image path (`LMMAdapter.image_transform`, as in training and
evaluation), which gives both what the LMM sees and the pad meta that maps the head's square output back to
the image; questions are asked in the model's chat template (`LMMAdapter.prompt`), after a system turn when
`system_prompt` is given (None: the template's own default system prompt, if it has one).

Attend-and-segment's `authors` variant grounds from each token's emitting row (decode capture records the
step that emits each token; the prefill fallback reads the previous position's row), subtracts the
answer's mean map and averages each phrase's root-word tokens (`flmm.engine.attend`); `DemoResult.attend`
says what was used.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flmm.config import load_config
from flmm.data.datasets import join_phrases
from flmm.demo.answer import GenerationSettings, generate_answer
from flmm.demo.decode_capture import (
    TokenFeatures,
    decode_capture_supported,
    generate_with_features,
    prefill_features,
)
from flmm.demo.phrases import answer_span, locate_phrases, selected_spans
from flmm.engine.attend import AttendAndSegment, authors_phrase_maps, build_attend_and_segment, root_tokens
from flmm.engine.build import preflight
from flmm.engine.evaluate import checkpoint_config, load_checkpoint, load_module
from flmm.engine.metrics import binarize
from flmm.lmm.adapter import LMMAdapter, LMMImage
from flmm.lmm.text import Span, phrase_ids_from_offsets
from flmm.masks import mask_box
from flmm.models.grounding import GroundingModel
from flmm.models.sam_cache import image_key
from flmm.models.selector import KeywordSelector

SOURCES = ("auto", "answer", "selector")


@dataclass
class PreparedImage:
    """One image, preprocessed once: `array (H, W, 3)` and `tensor (3, H, W)` uint8, the LMM's inputs
    (`lmm_image`, from the adapter's image path), the pad meta, and SAM's embedding `(1, C, h, w)`."""

    array: np.ndarray
    tensor: torch.Tensor
    lmm_image: LMMImage
    pad_meta: dict
    sam_embedding: torch.Tensor | None = None


@dataclass
class PhraseResult:
    """A grounded phrase: `span` into `DemoResult.text`, mask `(H, W)` bool, box `[x0, y0, x1, y1]` in
    original pixels (max edges exclusive; None for an empty mask), score in [0, 1]."""

    text: str
    span: Span
    in_answer: bool
    box: list[int] | None
    score: float
    mask: np.ndarray


@dataclass
class DemoResult:
    """What one question gave. `text` is what was grounded after `prompt` (the answer, or the user's
    phrases joined with ". " when they are not all in the answer); `source`: answer, selector or phrases;
    `mode`: trained-head or attend-and-segment; `image_size`: (H, W)."""

    question: str | None
    answer: str | None
    prompt: str
    text: str
    source: str
    mode: str
    phrases: list[PhraseResult]
    image_size: tuple[int, int]
    # attend-and-segment: `AttendAndSegment.describe()` plus "rows" (own / emitting); None for the head.
    attend: dict | None = None


class Demo:
    """A loaded grounder: the frozen LMM adapter and either the trained `head` (+ optional `selector`)
    or the training-free `attend`. Build it with `from_checkpoint` or `from_config`.

    ground_during_generation: record the answer tokens' features while the LMM generates (where the adapter
    supports it, `decode_capture_supported`); False: always one prefill over prompt + answer after it.
    """

    def __init__(
        self,
        adapter: LMMAdapter,
        head: GroundingModel | None = None,
        selector: KeywordSelector | None = None,
        attend: AttendAndSegment | None = None,
        question_suffix: str = "",
        cache_size: int = 4,
        ground_during_generation: bool = True,
        system_prompt: str | None = None,
    ):
        if (head is None) == (attend is None):
            raise ValueError("a Demo grounds with exactly one of a trained head or attend-and-segment")
        self.adapter, self.head, self.selector, self.attend = adapter, head, selector, attend
        self.question_suffix = question_suffix
        self.mode = "trained-head" if head is not None else "attend-and-segment"
        self.refiner = head.refiner if head is not None else attend.refiner
        self.transform = adapter.image_transform()
        self.cache_size = cache_size
        self.ground_during_generation = ground_during_generation
        self._cache: OrderedDict[str, PreparedImage] = OrderedDict()
        if system_prompt is not None:
            adapter.system_prompt = system_prompt
        self._rows: str | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path,
        overrides: Sequence[str] = (),
        device: str | None = None,
        ground_during_generation: bool = True,
    ) -> Demo:
        """The trained head (and selector, if it has one) of a tools/train.py checkpoint; a missing model
        its config names is reported (with the command that builds it, for a toy model)."""
        checkpoint = load_checkpoint(path)
        cfg = checkpoint_config(checkpoint, overrides, source=str(path))
        preflight(cfg, [])
        module = load_module(checkpoint, cfg).to(_device(device))
        return cls(
            module.adapter,
            head=module.model,
            selector=module.selector,
            ground_during_generation=ground_during_generation,
        )

    @classmethod
    def from_config(
        cls,
        path,
        overrides: Sequence[str] = (),
        top_fraction: float | None = None,
        device: str | None = None,
        ground_during_generation: bool = True,
        variant: str | None = None,
        heads: str | None = None,
        system_prompt: str | None = None,
    ) -> Demo:
        """Attend-and-segment with a config's frozen LMM and SAM; no checkpoint. variant / heads: over the
        config's `attend` section."""
        cfg = load_config(path, overrides)
        preflight(cfg, [])
        attend = build_attend_and_segment(cfg, top_fraction, variant, heads).to(_device(device))
        return cls(
            attend.adapter,
            attend=attend,
            ground_during_generation=ground_during_generation,
            system_prompt=system_prompt,
        )

    @property
    def _emitting(self) -> bool:
        """Whether grounding reads each token's emitting row (attend-and-segment's `authors` variant)."""
        return self.attend is not None and self.attend.variant == "authors"

    def prepare(self, image: np.ndarray) -> PreparedImage:
        """Preprocess `(H, W, 3)` uint8 RGB, or take it from the cache of the last `cache_size` images."""
        key = image_key(image)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        inputs = self.transform(image)
        prepared = PreparedImage(
            image,
            torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            inputs["lmm_image"],
            inputs["pad_meta"],
        )
        self._cache[key] = prepared
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return prepared

    def run(
        self,
        image: np.ndarray,
        question: str | None = None,
        phrases: Sequence[str] | None = None,
        settings: GenerationSettings | None = None,
        source: str = "auto",
        spans_of: Callable[[str], list[Span]] | None = None,
    ) -> DemoResult:
        """Answer `question` about `image` (uint8 `(H, W, 3)`) and ground the chosen phrases.

        phrases: ground these instead of choosing (the question may then be None); found in the answer when
        all of them are, else grounded on their own after the description prompt. settings: decoding,
        greedy by default. source: how phrases are chosen from the answer: `answer` (the whole answer),
        `selector` (the keyword selector), `auto` (the selector when the model has one). spans_of: choose
        the answer's spans with this function of its text instead (e.g. GCG's noun chunks), grounded from
        the same generation.
        """
        if source not in SOURCES:
            raise ValueError(f"phrase source must be one of {SOURCES}, got {source!r}")
        if source == "selector" and self.selector is None:
            raise ValueError(
                "phrase source 'selector' needs a checkpoint trained with a keyword selector "
                f"(model.selector); this {self.mode} model has none: use --source answer or --phrases"
            )
        if question is None and not phrases:
            raise ValueError("give a question, phrases to ground, or both")
        prepared = self.prepare(image)
        answer, prompt, features = None, self.adapter.prompt(), None
        if question is not None:
            if not question.strip():
                raise ValueError("the question is empty")
            asked = f"{question.strip()} {self.question_suffix}".strip()
            prompt = self.adapter.prompt(asked)
            answer, features = self._answer(prepared, prompt, settings or GenerationSettings())
        text, spans, kind = answer or "", None, "phrases"
        if phrases:
            spans = locate_phrases(text, phrases) if answer else None
            if spans is None:
                text, spans = join_phrases(list(phrases))
                prompt = self.adapter.prompt()
        elif spans_of is not None:
            spans, kind = spans_of(text), "answer"
        elif source == "answer" or (source == "auto" and self.selector is None):
            spans, kind = answer_span(text), "answer"
        else:
            kind = "selector"
        in_answer = text == answer
        results = self._ground(prepared, prompt, text, spans, in_answer, features if in_answer else None)
        size = (int(image.shape[0]), int(image.shape[1]))
        attend = None if self.attend is None else {**self.attend.describe(), "rows": self._rows or "own"}
        return DemoResult(question, answer, prompt, text, kind, self.mode, results, size, attend)

    def _answer(
        self, prepared: PreparedImage, prompt: str, settings: GenerationSettings
    ) -> tuple[str, TokenFeatures | None]:
        """The LMM's answer and, when recorded while generating, its tokens' features (None: not recorded)."""
        if self.ground_during_generation and decode_capture_supported(self.adapter):
            return generate_with_features(
                self.adapter, prepared.lmm_image, prompt, settings, emitting=self._emitting
            )
        return generate_answer(self.adapter, prepared.lmm_image, prompt, settings), None

    @torch.no_grad()
    def _ground(
        self,
        prepared: PreparedImage,
        prompt: str,
        text: str,
        spans: list[Span] | None,
        in_answer: bool,
        features: TokenFeatures | None,
    ) -> list[PhraseResult]:
        """Ground `spans` (None: the selector's choice) of `text` from its tokens' `features`; None: from one
        prefill over `prompt text`."""
        if not text.strip():
            return []
        if features is None:
            features = prefill_features(self.adapter, prepared.lmm_image, prompt, text, self._emitting)
        self._rows = features.rows
        offsets, token_hidden = features.offsets, features.hidden
        if spans is None:
            logits = self.selector(token_hidden[None].to(_module_device(self.selector)))
            spans = selected_spans(text, self.selector.select(logits)[0].tolist(), offsets)
        if not spans:
            return []
        owner = torch.tensor(phrase_ids_from_offsets(text, offsets, 0, spans))
        members = [(owner == p).nonzero().flatten() for p in range(len(spans))]
        attention = torch.stack([features.attention[m].mean(dim=0) for m in members])
        width = max(len(m) for m in members)
        hidden = token_hidden.new_zeros((len(spans), width, *token_hidden.shape[1:]))
        hidden_mask = torch.zeros(len(spans), width, dtype=torch.bool)
        for p, m in enumerate(members):
            hidden[p, : len(m)] = token_hidden[m]
            hidden_mask[p, : len(m)] = True
        if self._emitting:
            members = [root_tokens(offsets, text, span) for span in spans]
            attention = authors_phrase_maps(
                features.attention, self.adapter.num_heads, self.attend.heads, members
            )
        masks, scores = self._segment(prepared, attention, hidden, hidden_mask)
        return [
            PhraseResult(text[s:e], (s, e), in_answer, mask_box(mask), score, mask)
            for (s, e), mask, score in zip(spans, masks, scores, strict=True)
        ]

    def _segment(
        self,
        prepared: PreparedImage,
        attention: torch.Tensor,
        hidden: torch.Tensor,
        hidden_mask: torch.Tensor,
    ) -> tuple[list[np.ndarray], list[float]]:
        """P phrases' masks `(H, W)` bool and scores: SAM's predicted IoU (attend-and-segment), or the
        mean foreground probability inside the mask (trained head; 0 for an empty mask)."""
        image_index = torch.zeros(len(attention), dtype=torch.long)
        if self.refiner is not None and prepared.sam_embedding is None:
            prepared.sam_embedding = self.refiner.encode_images([prepared.tensor])
        if self.attend is not None:
            out = self.attend.segment(
                attention, image_index, [prepared.pad_meta], [prepared.tensor], prepared.sam_embedding
            )
            return [binarize(m).cpu().numpy() for m in out.masks], out.scores.tolist()
        device = _module_device(self.head)
        out = self.head(
            attention.to(device),
            image_index.to(device),
            [prepared.pad_meta],
            [prepared.tensor],
            hidden.to(device),
            hidden_mask.to(device),
            image_embeddings=prepared.sam_embedding,
        )
        masks, scores = [], []
        for logits in out.predictions:
            mask = binarize(logits)
            masks.append(mask.cpu().numpy())
            scores.append(float(logits.float().sigmoid()[mask].mean()) if mask.any() else 0.0)
        return masks, scores


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
