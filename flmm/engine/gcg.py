"""The GCG task: describe each image, pick the description's phrases, ground them, score with GLaMM's metrics.

For every image of a split (`flmm.data.gcg`): the `Demo` answers `DESCRIBE_IN_DETAIL` (greedy, `settings`);
the phrases are the keyword selector's choice when the model has one, else the answer's noun chunks
(`noun_chunks`), grounded from the features recorded while the answer was generated;
`flmm.engine.gcg_metrics` scores the split.

Writes into `out_dir`: `predictions/SPLIT/IMAGE_ID.json` for every image, also one without a phrase
(`{"image_id", "image_file", "caption", "phrases", "spans", "pred_masks": [COCO RLE], "source",
"glamm": the caption in GLaMM's `<p> phrase </p> [SEG]` form}`), results.json (`{"task": "gcg", "mode",
"checkpoint", "question", "max_new_tokens", "splits": {SPLIT: metrics}}`) and results.md.

Noun chunks without a parser (spaCy is not installed): the answer's words, cut at punctuation and at
function words (`CHUNK_BREAKS`: prepositions, conjunctions, auxiliaries, pronouns, common verbs); a
determiner or number starts a chunk; a chunk is kept when it holds a word that is not a determiner.
"A red circle is left of the two blue squares." -> "A red circle", "left", "the two blue squares".
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from flmm.data.gcg import GcgRecord, load_gcg_split
from flmm.data.image_io import load_rgb
from flmm.demo.answer import GenerationSettings
from flmm.demo.output import format_answer
from flmm.demo.pipeline import Demo, DemoResult
from flmm.engine.gcg_metrics import STOPWORDS, GcgImage, TextSimilarity, gcg_metrics, token_overlap, word_set
from flmm.lmm.text import DESCRIBE_IN_DETAIL, Span
from flmm.masks import mask_rle

DETERMINERS = word_set("a an the this that these those some two three four five several many each every")
# Function words end a chunk: the text rule's stopwords and a few verbs of descriptions.
CHUNK_BREAKS = (
    STOPWORDS | word_set("they them than very also can see shows show showing contains image picture")
) - DETERMINERS
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*|[^\sA-Za-z0-9]")
GCG_COLUMNS = ("images", "gt_phrases", "pred_phrases", "mask_recall", "mIoU", "AP50", "AP", "CIDEr", "METEOR")


def noun_chunks(text: str) -> list[Span]:
    """Character spans of the noun chunks of `text` (the heuristic of the module docstring)."""
    chunks: list[list[int]] = []
    current: list[int] | None = None
    content = False
    for match in WORD.finditer(text):
        word = match.group().lower()
        if not word[0].isalnum() or word in CHUNK_BREAKS:
            if current is not None and content:
                chunks.append(current)
            current, content = None, False
            continue
        if word in DETERMINERS and current is not None and content:
            chunks.append(current)
            current, content = None, False
        if current is None:
            current = [match.start(), match.end()]
        current[1] = match.end()
        content = content or word not in DETERMINERS
    if current is not None and content:
        chunks.append(current)
    return [(s, e) for s, e in chunks]


def _unique_ids(records: Sequence[GcgRecord]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for record in records:
        k = seen.get(record.image_id, 0)
        seen[record.image_id] = k + 1
        ids.append(record.image_id if k == 0 else f"{record.image_id}_{k}")
    return ids


def describe_and_ground(demo: Demo, image: np.ndarray, settings: GenerationSettings) -> DemoResult:
    """The Demo's description of `image` with its phrases grounded: the selector's, else noun chunks."""
    if demo.selector is not None:
        return demo.run(image, DESCRIBE_IN_DETAIL, settings=settings, source="selector")
    result = demo.run(image, DESCRIBE_IN_DETAIL, settings=settings, spans_of=noun_chunks)
    return replace(result, source="noun-chunks")


def prediction_record(image_id: str, record: GcgRecord, result: DemoResult) -> dict:
    """One image's prediction JSON (fields in the module docstring)."""
    return {
        "image_id": image_id,
        "image_file": str(record.image_path),
        "caption": result.answer or "",
        "phrases": [p.text for p in result.phrases],
        "spans": [list(p.span) for p in result.phrases],
        "pred_masks": [mask_rle(p.mask) for p in result.phrases],
        "source": result.source,
        "glamm": format_answer(result, "glamm"),
    }


def run_gcg(
    demo: Demo,
    data_root: str | Path,
    splits: Sequence[str],
    out_dir: str | Path,
    settings: GenerationSettings,
    *,
    mode: str,
    checkpoint: str | None = None,
    text_similarity: TextSimilarity = token_overlap,
) -> dict:
    """Run and score GCG on `splits`; write the outputs into `out_dir`; return results.json's content."""
    out_dir = Path(out_dir)
    results = {
        "task": "gcg",
        "mode": mode,
        "checkpoint": checkpoint,
        "question": DESCRIBE_IN_DETAIL,
        "max_new_tokens": settings.max_new_tokens,
        "splits": {},
    }
    for split in splits:
        records = load_gcg_split(data_root, split)
        folder = out_dir / "predictions" / split.replace(":", "_")
        folder.mkdir(parents=True, exist_ok=True)
        scored = []
        for image_id, record in zip(_unique_ids(records), records, strict=True):
            image = load_rgb(record.image_path)
            result = describe_and_ground(demo, image, settings)
            prediction = prediction_record(image_id, record, result)
            (folder / f"{image_id}.json").write_text(json.dumps(prediction, ensure_ascii=False) + "\n")
            gt_masks = record.masks()
            scored.append(
                GcgImage(
                    prediction["caption"],
                    prediction["phrases"],
                    [p.mask for p in result.phrases],
                    record.caption,
                    [p.text for p in record.phrases],
                    list(gt_masks),
                )
            )
        results["splits"][split] = gcg_metrics(scored, text_similarity)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(format_gcg_results(results) + "\n", encoding="utf-8")
    return results


def format_gcg_results(results: dict) -> str:
    """results.json's GCG content -> Markdown: one row per split, then the rules used."""
    rows = ["| split | " + " | ".join(GCG_COLUMNS) + " |", "|" + " --- |" * (len(GCG_COLUMNS) + 1)]
    notes = []
    for split, metrics in results["splits"].items():
        cells = []
        for column in GCG_COLUMNS:
            value = metrics.get(column)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                cells.append("-")
            elif isinstance(value, int):
                cells.append(str(value))
            else:
                cells.append(f"{100 * value:.2f}" if column not in ("CIDEr", "METEOR") else f"{value:.3f}")
        rows.append(f"| {split} | " + " | ".join(cells) + " |")
        notes = [f"text rule: {metrics['text_rule']}", f"not computed: {'; '.join(metrics['unavailable'])}"]
    header = f"GCG ({results['mode']}): recall, mIoU, AP50, AP in percent; CIDEr-D and METEOR as scores"
    return "\n".join([header, "", *rows, "", *notes])
