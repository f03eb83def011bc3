"""Shared by the fault tests: a catalogue of broken and odd image files, planted in place in a data root of
the real on-disk layout.

`break_records(root)` rewrites the image files of chosen `refcoco:train` records, one kind of fault each,
and says for each what a correct loader does with it: `skip` (the record is a counted skip, never a crash)
or `loads` (a valid image in an unusual format that must become the same RGB pixels). It works on any root
in the layout of DESIGN.md §3 (`coco/refcoco/{refs(unc).p, instances.json}`, images in `coco/train2014/`):
the shared real-format fixture and a world of `flmm.data.synthetic.generate_world` alike.

Which records: the train-protocol samples of `refcoco:train` (one per image, in the order the loader makes
them) are listed, and `len(kinds)` distinct image files are picked evenly spread over that list, so that the
broken ones fall to different data workers and DDP ranks; the same root and kinds always pick the same
files. Image files are shared: the same file serves refcoco+, refcocog and, in the real-format fixture, the
val/test splits too, so each `BadInput` lists every `dataset:split` its file affects (`affects`).

Kinds left out on purpose: a FIFO (shutil.copytree blocks on it, which would hang whoever copies the
broken root) and an unreadable file (root reads it anyway, and copytree fails on it for everyone else);
tests/faults/test_bad_image_files.py checks both on single files.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from flmm.data.refcoco import REFER_DATASETS, RES_IMAGE_DIR, load_refer_split, refer_paths
from flmm.data.safe_pickle import load_plain_json, load_plain_pickle

BOMB_SIDE = 30_000  # 9e8 pixels: over twice PIL's MAX_IMAGE_PIXELS, so Image.open raises, not warns


@dataclass(frozen=True)
class BadInput:
    """One planted fault.

    kind      short name (a key of `KINDS`)
    path      the image file that was rewritten (or removed, or replaced by a directory)
    outcome   "skip": the record must be a counted skip; "loads": it must load as `hw` RGB pixels
    stage     where today's loader notices a skip: "build" (the dataset drops the record when it is built:
              missing file, directory) or "sample" (building the sample fails); None for "loads"
    image_id  the image's id in instances.json; `hw` its annotated (height, width)
    ref_ids   the refcoco:train refs on this image
    affects   "dataset:split" -> how many `all-sentences` samples (= sentences) of that split use this image
              file; under the `train` and `first-sentence-concat` protocols each key is exactly one sample
    """

    kind: str
    path: Path
    outcome: str
    stage: str | None
    image_id: int
    hw: tuple[int, int]
    ref_ids: tuple[int, ...]
    affects: dict[str, int]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A 60-byte PNG whose header claims `side x side` RGB pixels (a decompression bomb's signature)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _corrupt(path: Path, original: bytes, img: Image.Image) -> None:
    # The real header, then noise: a file that identifies as its format but whose data is garbage
    noise = np.random.default_rng(0).integers(0, 256, len(original), dtype=np.uint8).tobytes()
    path.write_bytes(original[:20] + noise[20:])


def _truncated(path: Path, original: bytes, img: Image.Image) -> None:
    path.write_bytes(original[: len(original) // 2])


def _empty(path: Path, original: bytes, img: Image.Image) -> None:
    path.write_bytes(b"")


def _bomb(path: Path, original: bytes, img: Image.Image) -> None:
    path.write_bytes(bomb_png())


def _resized(path: Path, original: bytes, img: Image.Image) -> None:
    half = (max(1, img.width // 2), max(1, img.height // 2))
    path.write_bytes(_encode(img.resize(half), "JPEG", quality=95))


def _missing(path: Path, original: bytes, img: Image.Image) -> None:
    path.unlink()


def _directory(path: Path, original: bytes, img: Image.Image) -> None:
    path.unlink()
    path.mkdir()


def _grayscale(path: Path, original: bytes, img: Image.Image) -> None:
    path.write_bytes(_encode(img.convert("L"), "JPEG", quality=95))


def _palette(path: Path, original: bytes, img: Image.Image) -> None:
    # PNG bytes under the .jpg name: PIL goes by the content, as must the loader
    palette = img.quantize(64)
    path.write_bytes(_encode(palette, "PNG", transparency=0))


def _cmyk(path: Path, original: bytes, img: Image.Image) -> None:
    path.write_bytes(_encode(img.convert("CMYK"), "JPEG", quality=95))


def _gray16(path: Path, original: bytes, img: Image.Image) -> None:
    # 16-bit gray whose top byte is the 8-bit gray: loaded right (>> 8) it is the grayscale image exactly
    gray = np.asarray(img.convert("L"), dtype=np.uint16)
    path.write_bytes(_encode(Image.fromarray(gray * 257), "PNG"))


# kind -> (outcome, stage, how to plant it in `path` given the file's bytes and its decoded RGB image)
KINDS: dict[str, tuple[str, str | None, Callable[[Path, bytes, Image.Image], None]]] = {
    "corrupt": ("skip", "sample", _corrupt),
    "truncated": ("skip", "sample", _truncated),
    "empty": ("skip", "sample", _empty),
    "bomb": ("skip", "sample", _bomb),
    "resized": ("skip", "sample", _resized),
    "missing": ("skip", "build", _missing),
    "directory": ("skip", "build", _directory),
    "grayscale": ("loads", None, _grayscale),
    "palette": ("loads", None, _palette),
    "cmyk": ("loads", None, _cmyk),
    "gray16": ("loads", None, _gray16),
}


def _sentences_per_file(root: Path) -> dict[Path, Counter]:
    """Image file -> Counter of "dataset:split" -> sentences of that split's refs on the image."""
    per_file: dict[Path, Counter] = {}
    for dataset in REFER_DATASETS:
        refs_path, instances_path = refer_paths(root, dataset)
        if not (refs_path.is_file() and instances_path.is_file()):
            continue
        instances = load_plain_json(instances_path, "COCO instances.json")
        files = {im["id"]: root / "coco" / RES_IMAGE_DIR / im["file_name"] for im in instances["images"]}
        for ref in load_plain_pickle(refs_path):
            key = f"{dataset}:{ref['split']}"
            per_file.setdefault(files[ref["image_id"]], Counter())[key] += len(ref["sentences"])
    return per_file


def break_records(
    root: str | Path, kinds: Sequence[str] = tuple(KINDS), keep_intact: int = 1
) -> list[BadInput]:
    """Plant one fault of each of `kinds` in a distinct refcoco:train image file under `root`, in place.

    `root` must be pristine (refs and instances intact, images unbroken) and have at least
    `len(kinds) + keep_intact` train images: the fixture has 8 (pass a subset of `KINDS`), a
    `generate_world` of 24 images about 18. Returns the faults in the order of `kinds`.
    """
    root = Path(root)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must be distinct names of {list(KINDS)}; got {list(kinds)}")
    split = load_refer_split(root, "refcoco", "train")
    by_image = split.objects_by_image()
    # distinct files, in train-sample order: two image ids naming one file would be two broken records
    image_of: dict[Path, int] = {}
    for image_id in by_image:
        image_of.setdefault(split.images[image_id].path, image_id)
    files = list(image_of)
    if len(files) < len(kinds) + keep_intact:
        raise ValueError(
            f"{root}: refcoco:train has {len(files)} distinct image files; {len(kinds)} kinds and "
            f"{keep_intact} intact need {len(kinds) + keep_intact}"
        )
    sentences = _sentences_per_file(root)
    records = []
    for k, kind in enumerate(kinds):
        path = files[k * len(files) // len(kinds)]
        image_id = image_of[path]
        outcome, stage, plant = KINDS[kind]
        original = path.read_bytes()
        with Image.open(io.BytesIO(original)) as img:
            rgb = img.convert("RGB")
        plant(path, original, rgb)
        info = split.images[image_id]
        records.append(
            BadInput(
                kind=kind,
                path=path,
                outcome=outcome,
                stage=stage,
                image_id=image_id,
                hw=(info.height, info.width),
                ref_ids=tuple(
                    o.ref_id for i, objs in by_image.items() if split.images[i].path == path for o in objs
                ),
                affects=dict(sorted(sentences[path].items())),
            )
        )
    return records
