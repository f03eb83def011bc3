"""Pretrain the toy LLaVA with next-token loss only, on text about synthetic scenes (`flmm.toy.captions`).

The model is transformers' `LlavaForConditionalGeneration` exactly as `flmm.lmm.tiny.build_tiny_llava`
makes it (word-level tokenizer trained here on the toy vocabulary, `LlavaProcessor`), so the weights saved
at the end load offline with `from_pretrained` like a hub checkpoint and go through the same adapter as
llava-hf models. Vision tower, projector and decoder all learn; the loss is the cross-entropy of the answer
tokens (plus `</s>`) given the image and the prompt. Nothing spatial is ever a target: no masks, no boxes,
no coordinates, only words. A recipe with `init` goes on from a pretrained toy LLaVA (the embedded default's
second stage, `configs/toy_lmm_chat.yaml`: questions, answers and narratives beside the captions), adding
the words its tokenizer lacks as new tokens, as LISA adds `[SEG]`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import AddedToken
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from flmm.data.transforms import LlavaPadTransform
from flmm.errors import ConfigError
from flmm.lmm.tiny import IMAGE_TOKEN, build_tiny_llava
from flmm.toy.captions import FORMATS, WORD_KINDS, chat_corpus, corpus, render_sample
from flmm.toy.optimize import run_steps
from flmm.toy.recipe import LmmRecipe, world_config
from flmm.toy.world import LmmPool, lmm_pool

REPORT_FILE = "pretrain_report.json"
# The report of the model a recipe's `init` went on from, kept beside the new one (the first stage's recipe).
INIT_REPORT_FILE = "pretrain_report.init.json"


def image_transform(processor: LlavaProcessor, side: int) -> LlavaPadTransform:
    """The grounding pipeline's own transform for this model (`LMMAdapter.image_transform`)."""
    image_processor = processor.image_processor
    return LlavaPadTransform(side, image_processor.image_mean, image_processor.image_std)


def encode_batch(
    processor: LlavaProcessor, samples: list[tuple[str, str]], num_image_tokens: int
) -> dict[str, torch.Tensor]:
    """`(prompt, answer)` pairs -> right-padded `input_ids`, `attention_mask` and `labels` `(B, S)`.

    The text is `"<prompt> <answer></s>"` with the image token expanded as the processor expands it, the
    way `LMMAdapter.encode_text` builds the grounding input; labels are -100 except on the answer and `</s>`.
    """
    tokenizer = processor.tokenizer
    prompts = [p.replace(IMAGE_TOKEN, IMAGE_TOKEN * num_image_tokens) for p, _ in samples]
    full = tokenizer([f"{p} {a}" for p, (_, a) in zip(prompts, samples)], add_special_tokens=True)
    heads = tokenizer(prompts, add_special_tokens=True)
    rows = [[*ids, tokenizer.eos_token_id] for ids in full["input_ids"]]
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    labels = torch.full((len(rows), length), -100)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (row, head) in enumerate(zip(rows, heads["input_ids"])):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        labels[i, len(head) : len(row)] = input_ids[i, len(head) : len(row)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def draw_batch(
    pool: LmmPool, recipe: LmmRecipe, rng: np.random.Generator, fmt: str | None = None
) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """A random batch: `pixel_values (B, 3, s, s)` float32 and one `(prompt, answer)` per image."""
    names = [f for f in FORMATS if recipe.formats.get(f, 0) > 0]
    weights = np.array([recipe.formats[f] for f in names], dtype=float)
    index = rng.integers(len(pool), size=recipe.batch_size)
    chosen = (
        [fmt] * len(index)
        if fmt
        else [names[k] for k in rng.choice(len(names), len(index), p=weights / weights.sum())]
    )
    samples = [
        render_sample(pool.objects[i], f, rng, recipe.shuffle, pool.narratives[i])
        for i, f in zip(index, chosen)
    ]
    return pool.pixel_values[torch.from_numpy(index)].float(), samples


def token_loss(model, pixel_values: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over labelled positions, and the logits `(B, S, V)`."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixel_values
    ).logits
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    return loss, logits


@torch.no_grad()
def evaluate(model, processor, pool: LmmPool, recipe: LmmRecipe, num_image_tokens: int) -> dict:
    """Held-out loss per format, next-token accuracy per word kind of the description answers (None for
    a kind that never occurs) and the answer format's exact-match accuracy: the share of questions whose
    every answer token (and `</s>`) is the argmax given the ones before, i.e. whose greedy answer is the
    object's phrase word for word (a scene without a question counts with its description instead)."""
    model.eval()
    kind_of = {
        processor.tokenizer.convert_tokens_to_ids(word): kind
        for kind, words in WORD_KINDS.items()
        for word in words
    }
    hits = {kind: [0, 0] for kind in [*WORD_KINDS, "all"]}
    answered = [0, 0]
    losses = {}
    for fmt in FORMATS:
        rng = np.random.default_rng([recipe.seed, 31, FORMATS.index(fmt)])
        total, count = 0.0, 0
        for start in range(0, len(pool), recipe.batch_size):
            index = torch.arange(start, min(start + recipe.batch_size, len(pool)))
            samples = [
                render_sample(pool.objects[int(i)], fmt, rng, 0.0, pool.narratives[int(i)]) for i in index
            ]
            batch = encode_batch(processor, samples, num_image_tokens)
            loss, logits = token_loss(model, pool.pixel_values[index].float(), batch)
            total, count = total + float(loss) * len(index), count + len(index)
            targets, predicted = batch["labels"][:, 1:], logits[:, :-1].argmax(-1)
            labelled = targets != -100
            if fmt == "answer":
                answered[0] += int(((predicted == targets) | ~labelled).all(dim=1).sum())
                answered[1] += len(index)
            if fmt != "description":
                continue
            hits["all"][0] += int((predicted == targets)[labelled].sum())
            hits["all"][1] += int(labelled.sum())
            for token, kind in kind_of.items():
                at = targets == token
                hits[kind][0] += int((predicted == targets)[at].sum())
                hits[kind][1] += int(at.sum())
        losses[fmt] = total / max(1, count)
    model.train()
    accuracy = {kind: (h / n if n else None) for kind, (h, n) in hits.items()}
    return {"loss": losses, "accuracy": accuracy, "answer_exact_match": answered[0] / max(1, answered[1])}


def extend_vocabulary(model, tokenizer, texts: list[str], seed: int = 0) -> list[str]:
    """Add the words of `texts` that `tokenizer` lacks as tokens and give `model` their embedding rows
    (transformers' mean-resizing: drawn around the mean of the old rows, from a generator seeded with
    `seed`); returns the words added, sorted."""
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    normalize = tokenizer.backend_tokenizer.normalizer.normalize_str
    vocab = tokenizer.get_vocab()
    words = sorted({w for text in texts for w, _ in pre.pre_tokenize_str(normalize(text))} - set(vocab))
    if words:
        # Words match only as whole words ("out" never inside "outside"); punctuation matches anywhere.
        tokens = [AddedToken(w, single_word=w.isalnum(), normalized=True) for w in words]
        tokenizer.add_tokens(tokens)
        # The new rows are random draws: seeded, so that a second stage comes out the same every time.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return words


def train(model, processor, pool: LmmPool, recipe: LmmRecipe, progress: bool) -> list[tuple[int, float]]:
    """`recipe.steps` AdamW steps (warm-up + cosine) on batches of `pool`; returns (step, loss) every 10."""
    vision = model.config.vision_config
    num_image_tokens = (vision.image_size // vision.patch_size) ** 2
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng([recipe.seed, 21])
    model.train()

    def step_loss() -> torch.Tensor:
        pixel_values, samples = draw_batch(pool, recipe, rng)
        return token_loss(model, pixel_values, encode_batch(processor, samples, num_image_tokens))[0]

    curve = run_steps(model.parameters(), step_loss, recipe, "pretraining toy LLaVA", progress)
    model.eval()
    return curve


def pretrain_lmm(
    out_dir: str | Path, recipe: LmmRecipe, progress: bool = True, log: Callable[[str], None] = print
) -> dict:
    """Build the tiny LLaVA in `out_dir`, pretrain it `recipe.steps` steps, save it there; return the report.

    The report (also written to `out_dir/pretrain_report.json`) holds the recipe, the loss curve, the
    held-out loss per format, token accuracy per word kind and answer exact-match, and the words added to
    an `init` model's tokenizer (whose own report is copied to `out_dir/pretrain_report.init.json`). With 0
    steps the random initial weights are saved as built and nothing is evaluated (`held_out` is None).
    """
    report = {"recipe": asdict(recipe), "loss_curve": [], "held_out": None, "added_words": []}
    if recipe.init is None:
        out = build_tiny_llava(out_dir, seed=recipe.seed, config=recipe.sizes, corpus=corpus())
    else:
        init = Path(recipe.init)
        if not (init / "config.json").is_file():
            raise ConfigError(
                f"recipe init: no toy LLaVA folder at {init} (build it with its own recipe first)"
            )
        if not recipe.steps:
            raise ConfigError("recipe init: steps must be >= 1 to go on training (0 would only copy it)")
        out = Path(out_dir)
        if out.resolve() == init.resolve():
            raise ConfigError(f"recipe init {init} is also the output folder; save to another folder")
    if recipe.steps:
        source = out if recipe.init is None else init
        model = LlavaForConditionalGeneration.from_pretrained(source, local_files_only=True)
        processor = LlavaProcessor.from_pretrained(source, local_files_only=True)
        if recipe.init is not None:
            report["added_words"] = extend_vocabulary(model, processor.tokenizer, chat_corpus(), recipe.seed)
            log(f"continuing from {init}; new tokens: {' '.join(report['added_words']) or 'none'}")
            processor.save_pretrained(out)
            if (init / REPORT_FILE).is_file():
                shutil.copyfile(init / REPORT_FILE, out / INIT_REPORT_FILE)
        vision = model.config.vision_config
        transform = image_transform(processor, vision.image_size)
        world = world_config(recipe)
        log(f"drawing {recipe.scenes} training and {recipe.eval_scenes} held-out synthetic scenes")
        pool = lmm_pool(world, recipe.scenes, recipe.seed, "lmm", transform)
        report["loss_curve"] = train(model, processor, pool, recipe, progress)
        model.save_pretrained(out, safe_serialization=True)
        eval_pool = lmm_pool(world, recipe.eval_scenes, recipe.seed, "lmm_eval", transform)
        num_image_tokens = (vision.image_size // vision.patch_size) ** 2
        report["held_out"] = evaluate(model, processor, eval_pool, recipe, num_image_tokens)
    (Path(out) / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return report
