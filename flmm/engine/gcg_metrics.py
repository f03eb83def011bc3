"""GLaMM's grounded conversation generation (GCG) metrics, offline.

Per image the prediction is a caption with phrases and one mask per phrase; the ground truth the same.

- mask recall: ground-truth phrases recalled / ground-truth phrases (over the whole split). Pairs
  (ground truth, prediction) are admissible when their masks have IoU >= 0.5 and their phrases are similar
  (text similarity >= 0.5); admissible pairs are taken one-to-one, greedily by decreasing IoU. (GLaMM
  stops at the first pair by IoU that fails either test; taking the next admissible pair instead is the
  stated rule, and the two agree whenever the best-IoU pairs are the admissible ones.)
- text similarity: GLaMM uses the cosine of bert-base-uncased mean-pooled embeddings, which needs a model
  that is not available offline here. The default, `token_overlap`, is the Dice overlap of the phrases'
  content words: lower-cased words, articles / prepositions / pronouns / auxiliaries (`STOPWORDS`) removed,
  a plural "s" dropped; 2 |A & B| / (|A| + |B|). "the red circle" vs "a circle" gives 2/3; two phrases with
  no content word are similar when equal. Another rule (e.g. `embedding_similarity` with a locally
  installed sentence-embedding model) plugs in as `text_similarity=`; results name the rule used.
- mIoU: per image, predicted and ground-truth masks paired one-to-one greedily by the largest IoU (pairs
  of IoU 0 are not paired), the mean IoU of the pairs (0 with no pair), then the mean over images.
- AP50: COCO mask AP at IoU 0.5 (pycocotools COCOeval, `segm`, one category, every prediction scored 1.0
  so that ties keep the predictions' order, image by image), and AP (0.5:0.95) beside it.
- captions: CIDEr-D (`cider_d`, Vedantam et al. 2015 as coco-caption computes it: 1..4-grams, tf-idf with
  document frequencies over the references, clipped counts, Gaussian length penalty sigma 6, x10) on
  lower-cased word tokens (coco-caption's Java PTB tokenizer is not used). METEOR needs pycocoevalcap's
  Java METEOR 1.5: computed when `pycocoevalcap` is importable and `java` is on PATH, else reported as
  unavailable (it is not a requirement of flmm).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from flmm.masks import mask_rle

IOU_THRESHOLD = 0.5
TEXT_THRESHOLD = 0.5


def word_set(words: str) -> frozenset[str]:
    """The whitespace-separated words of `words` as a set."""
    return frozenset(words.split())


TOKEN_OVERLAP_RULE = (
    "token_overlap: Dice overlap of content words (lower-cased, stopwords removed, plural s dropped) >= 0.5"
)
STOPWORDS = word_set(
    """
    a an the this that these those some any each every its it their his her our your my of in on at
    to from by with into onto over under above below near next behind beside between and or but is
    are was were be been being has have had there here which who whom whose what where when while as
    for
    """
)
# Position words (left, right, top, ...) are content: "the left circle" is not "the circle".

TextSimilarity = Callable[[str, str], float]
WORD = re.compile(r"[a-z0-9]+")


def content_words(phrase: str) -> set[str]:
    """The content words of a phrase (see the module docstring), singularised by dropping a final "s"."""
    words = (w for w in WORD.findall(phrase.lower()) if w not in STOPWORDS)
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words}


def token_overlap(a: str, b: str) -> float:
    """Dice overlap of the content words of two phrases, in [0, 1]."""
    wa, wb = content_words(a), content_words(b)
    if not wa and not wb:
        return float(a.strip().lower() == b.strip().lower())
    return 2 * len(wa & wb) / (len(wa) + len(wb))


def embedding_similarity(model_path: str) -> TextSimilarity:
    """GLaMM's rule with a local model: cosine of mean-pooled last hidden states (loaded from disk only)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModel.from_pretrained(model_path, local_files_only=True).eval()

    @torch.no_grad()
    def embed(text: str) -> torch.Tensor:
        inputs = tokenizer(text, return_tensors="pt", max_length=512, truncation=True)
        return model(**inputs).last_hidden_state[0].mean(dim=0)

    def similarity(a: str, b: str) -> float:
        return float(torch.nn.functional.cosine_similarity(embed(a), embed(b), dim=0))

    similarity.rule = f"embedding cosine ({model_path}) >= 0.5"
    return similarity


def iou_matrix(first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> np.ndarray:
    """`(len(first), len(second))` IoUs of bool masks (0 where both are empty)."""
    out = np.zeros((len(first), len(second)))
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            union = np.logical_or(a, b).sum()
            out[i, j] = np.logical_and(a, b).sum() / union if union else 0.0
    return out


def greedy_pairs(scores: np.ndarray, admissible: np.ndarray | None = None) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs, greedily by decreasing score, among admissible cells of score > 0."""
    scores = np.where(admissible if admissible is not None else True, scores, 0.0).astype(float)
    pairs = []
    while scores.size and scores.max() > 0:
        i, j = np.unravel_index(np.argmax(scores), scores.shape)
        pairs.append((int(i), int(j)))
        scores[i, :] = 0
        scores[:, j] = 0
    return pairs


def image_miou(pred_masks: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray]) -> float:
    """GLaMM's per-image mIoU: mean IoU of the greedy one-to-one pairs, 0 without a pair."""
    ious = iou_matrix(pred_masks, gt_masks)
    pairs = greedy_pairs(ious)
    return float(np.mean([ious[p] for p in pairs])) if pairs else 0.0


def recalled(
    gt_masks: Sequence[np.ndarray],
    gt_phrases: Sequence[str],
    pred_masks: Sequence[np.ndarray],
    pred_phrases: Sequence[str],
    text_similarity: TextSimilarity = token_overlap,
) -> int:
    """How many ground-truth phrases of one image are recalled (see the module docstring)."""
    ious = iou_matrix(gt_masks, pred_masks)
    texts = np.array([[text_similarity(g, p) for p in pred_phrases] for g in gt_phrases]).reshape(ious.shape)
    return len(greedy_pairs(ious, (ious >= IOU_THRESHOLD) & (texts >= TEXT_THRESHOLD)))


def mask_ap(images: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]) -> dict[str, float]:
    """COCO mask AP50 and AP of `[(pred_masks, gt_masks)]` per image, one category, scores 1.0."""
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    predictions = []
    for image_id, (preds, gts) in enumerate(images, start=1):
        shape = (gts[0] if len(gts) else preds[0]).shape if len(gts) or len(preds) else (1, 1)
        gt["images"].append({"id": image_id, "height": int(shape[0]), "width": int(shape[1])})
        for mask in gts:
            rle = mask_rle(mask)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        for mask in preds:
            rle = mask_rle(mask)
            predictions.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": 1.0})
    if not gt["annotations"] or not predictions:
        return {"AP50": 0.0, "AP": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(predictions), "segm")
        evaluator.params.catIds = [1]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"AP50": max(float(evaluator.stats[1]), 0.0), "AP": max(float(evaluator.stats[0]), 0.0)}


def caption_tokens(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _ngrams(words: list[str], n_max: int = 4) -> list[Counter]:
    return [Counter(tuple(words[k : k + n]) for k in range(len(words) - n + 1)) for n in range(1, n_max + 1)]


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0) -> float:
    """Corpus CIDEr-D of one candidate caption per image against its reference captions (mean over images).

    With a single image every n-gram's idf is log(1 / 1) = 0 and the score is 0, as in coco-caption.
    """
    cands = [_ngrams(caption_tokens(c)) for c in candidates]
    refs = [[_ngrams(caption_tokens(r)) for r in rs] for rs in references]
    df: Counter = Counter()
    for rs in refs:
        df.update({gram for r in rs for counts in r for gram in counts})
    log_images = math.log(float(len(candidates))) if candidates else 0.0

    def vector(grams: list[Counter]) -> tuple[list[dict], list[float], int]:
        vecs, norms = [], []
        for counts in grams:
            vec = {g: tf * (log_images - math.log(max(1.0, df[g]))) for g, tf in counts.items()}
            vecs.append(vec)
            norms.append(math.sqrt(sum(v * v for v in vec.values())))
        return vecs, norms, sum(grams[0].values())

    scores = []
    for cand, rs in zip(cands, refs, strict=True):
        cv, cn, clen = vector(cand)
        per_ref = []
        for r in rs:
            rv, rn, rlen = vector(r)
            sims = []
            for n in range(4):
                dot = sum(min(v, rv[n][g]) * rv[n][g] for g, v in cv[n].items() if g in rv[n])
                sim = dot / (cn[n] * rn[n]) if cn[n] and rn[n] else 0.0
                sims.append(sim * math.exp(-((clen - rlen) ** 2) / (2 * sigma**2)))
            per_ref.append(np.mean(sims))
        scores.append(10.0 * float(np.mean(per_ref)) if per_ref else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def meteor_available() -> bool:
    try:
        import pycocoevalcap.meteor.meteor  # noqa: F401
    except ImportError:
        return False
    return shutil.which("java") is not None


def meteor(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """pycocoevalcap's METEOR 1.5 (needs `meteor_available()`)."""
    from pycocoevalcap.meteor.meteor import Meteor

    keys = [str(i) for i in range(len(candidates))]
    tok = [" ".join(caption_tokens(c)) for c in candidates]
    score, _ = Meteor().compute_score(
        {k: [" ".join(caption_tokens(r)) for r in rs] for k, rs in zip(keys, references, strict=True)},
        {k: [c] for k, c in zip(keys, tok, strict=True)},
    )
    return float(score)


@dataclass
class GcgImage:
    """One image's prediction and ground truth: captions, phrases and their `(H, W)` bool masks."""

    caption: str
    phrases: list[str]
    masks: list[np.ndarray]
    gt_caption: str
    gt_phrases: list[str]
    gt_masks: list[np.ndarray]


def gcg_metrics(images: Sequence[GcgImage], text_similarity: TextSimilarity = token_overlap) -> dict:
    """Every GCG metric of a split, with the text rule and the caption metrics that were used."""
    gt_total = sum(len(im.gt_phrases) for im in images)
    hits = sum(recalled(im.gt_masks, im.gt_phrases, im.masks, im.phrases, text_similarity) for im in images)
    captions, references = [im.caption for im in images], [[im.gt_caption] for im in images]
    metrics = {
        "images": len(images),
        "gt_phrases": gt_total,
        "pred_phrases": sum(len(im.phrases) for im in images),
        "mask_recall": hits / gt_total if gt_total else float("nan"),
        "mIoU": float(np.mean([image_miou(im.masks, im.gt_masks) for im in images]))
        if images
        else float("nan"),
        **mask_ap([(im.masks, im.gt_masks) for im in images]),
        "CIDEr": cider_d(captions, references),
    }
    unavailable = []
    if meteor_available():
        metrics["METEOR"] = meteor(captions, references)
    else:
        unavailable.append("METEOR (pycocoevalcap with java not installed)")
    rule = getattr(
        text_similarity, "rule", TOKEN_OVERLAP_RULE if text_similarity is token_overlap else "custom"
    )
    return {
        **metrics,
        "text_rule": rule,
        "caption_metrics": [m for m in ("CIDEr", "METEOR") if m in metrics],
        "unavailable": [*unavailable, "SPICE, BLEU, ROUGE-L (not computed)"],
    }
