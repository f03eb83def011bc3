"""Bad annotation files (JSON, refs pickles, segmentations, PNG narratives) are an error naming the file,
record and field, or a counted skip, never a crash deep inside json, pickle or pycocotools; unicode text
is kept."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from flmm.data.coco_masks import _compressed_counts, decode_segmentation
from flmm.data.datasets import RefCocoDataset
from flmm.data.png import load_png_split, phrase_masks
from flmm.data.refcoco import load_refer_split
from flmm.data.safe_pickle import load_plain_pickle
from flmm.data.synthetic import _rle_counts
from flmm.errors import DataError

REFS = "coco/refcoco/refs(unc).p"
INSTANCES = "coco/refcoco/instances.json"
NARRATIVES = "coco/annotations/png_coco_val2017.json"
WHERE = "instances.json: ann_id 7"


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("relative", "load"),
    [
        (INSTANCES, lambda root: load_refer_split(root, "refcoco", "val")),
        (NARRATIVES, lambda root: load_png_split(root, "val2017")),
        ("coco/annotations/panoptic_val2017.json", lambda root: load_png_split(root, "val2017")),
    ],
)
def test_truncated_annotation_json_names_the_file_and_the_position(writable_real_format, relative, load):
    path = writable_real_format / relative
    _truncate(path)
    with pytest.raises(DataError, match=r"not valid JSON: .* at line \d+ column \d+ \(char \d+\)") as info:
        load(writable_real_format)
    assert str(info.value).startswith(f"{path}: ")


def test_annotation_json_that_is_not_utf8_names_the_byte(writable_real_format):
    path = writable_real_format / INSTANCES
    path.write_bytes(b'{"images": ["\xff\xfe"]}')
    with pytest.raises(DataError, match=r"instances\.json: not UTF-8 text at byte 13"):
        load_refer_split(writable_real_format, "refcoco", "val")


def _edit_json(root, relative, edit):
    path = root / relative
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("annotations"), r"instances\.json: field 'annotations' is missing"),
        (lambda d: d["images"][2].update(height="tall"), r"images\[2\]: field 'height' should be an integer"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\]: field 'file_name' is missing"),
        (lambda d: d["annotations"].__setitem__(1, [1, 2]), r"annotations\[1\] should be an object"),
    ],
)
def test_instances_json_of_unexpected_types_names_the_entry_and_field(writable_real_format, edit, message):
    _edit_json(writable_real_format, INSTANCES, edit)
    with pytest.raises(DataError, match=message):
        load_refer_split(writable_real_format, "refcoco", "train")


def _edit_refs(root, edit):
    """Replace the refs pickle under `root` by `edit(refs)`, pickled as the refer tools do."""
    path = root / REFS
    path.write_bytes(pickle.dumps(edit(pickle.loads(path.read_bytes())), protocol=2))


def _mutated(change):
    """An edit that changes the refs list in place and keeps it."""
    return lambda refs: (change(refs), refs)[1]


def _first_train(change):
    """An edit that changes the first train ref in place."""
    return _mutated(lambda refs: change(next(r for r in refs if r["split"] == "train")))


FATAL_REFS = {
    "not-a-list": (lambda refs: {"refs": refs}, r"expected a list of refs, found dict"),
    "entry-not-a-dict": (
        _mutated(lambda refs: refs.insert(3, ("ref", 1))),
        r"ref #3 should be a dict, found tuple",
    ),
    "no-split": (
        _mutated(lambda refs: refs[5].pop("split")),
        r"ref #5 \(ref_id \d+\): field 'split' is missing",
    ),
    "split-not-str": (
        _mutated(lambda refs: refs[0].update(split=1)),
        r"ref #0 .*field 'split' should be a string",
    ),
}


@pytest.mark.parametrize("case", FATAL_REFS)
def test_refs_pickle_that_is_no_refs_file_is_an_error_naming_file_and_field(writable_real_format, case):
    edit, message = FATAL_REFS[case]
    _edit_refs(writable_real_format, edit)
    with pytest.raises(DataError, match=message) as info:
        load_refer_split(writable_real_format, "refcoco", "train", max_skip_fraction=1.0)
    assert str(info.value).startswith(str(writable_real_format / REFS))


def _set_sentence(field, value):
    return _first_train(lambda ref: ref["sentences"][0].update({field: value}))


EMPTY = r"sentences\[0\] \(sent_id \d+\) is empty or whitespace"
SKIPPED_REFS = {
    "no-ann-id": (_first_train(lambda ref: ref.pop("ann_id")), r"field 'ann_id' is missing"),
    "ann-id-none": (_first_train(lambda ref: ref.update(ann_id=None)), r"'ann_id' should be .*NoneType"),
    "image-id-text": (_first_train(lambda ref: ref.update(image_id="x")), r"'image_id' should be .*str 'x'"),
    "sentences-str": (_first_train(lambda ref: ref.update(sentences="red")), r"'sentences' should be a list"),
    "sentence-not-dict": (_first_train(lambda ref: ref.update(sentences=["red"])), r"sentences\[0\] should"),
    "sent-none": (_set_sentence("sent", None), r"sentences\[0\]: field 'sent' should be a string"),
    "sent-id-missing": (
        _first_train(lambda ref: ref["sentences"][0].pop("sent_id")),
        r"sentences\[0\]: field 'sent_id' is missing",
    ),
    "blank-sentence": (_set_sentence("sent", " \t\n"), EMPTY),
    "empty-sentence": (_set_sentence("sent", ""), EMPTY),
}


@pytest.mark.parametrize("case", SKIPPED_REFS)
def test_malformed_ref_is_a_counted_skip_naming_file_ref_and_field(writable_real_format, case):
    edit, message = SKIPPED_REFS[case]
    pristine = load_refer_split(writable_real_format, "refcoco", "train")
    _edit_refs(writable_real_format, edit)
    with pytest.raises(DataError, match=message) as info:
        load_refer_split(writable_real_format, "refcoco", "train", max_skip_fraction=0.0)
    assert str(writable_real_format / REFS) in str(info.value)
    lenient = load_refer_split(writable_real_format, "refcoco", "train", max_skip_fraction=0.5)
    assert len(lenient.objects) == len(pristine.objects) - 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.pop("segmentation"), r"ann_id 1000: field 'segmentation' is missing"),
        (lambda a: a.update(segmentation="polygon"), r"ann_id 1000: field 'segmentation' should be"),
        (lambda a: a.update(bbox=[1, 2, 3]), r"ann_id 1000: field 'bbox' should be 4 numbers"),
    ],
)
def test_annotation_without_a_usable_mask_field_is_a_counted_skip_naming_it(
    writable_real_format, edit, message
):
    _edit_json(writable_real_format, INSTANCES, lambda d: edit(d["annotations"][0]))
    with pytest.raises(DataError, match=message):
        load_refer_split(writable_real_format, "refcoco", "train")


def _compressed(counts_of_mask):
    return mask_utils.encode(np.asfortranarray(counts_of_mask.astype(np.uint8)))["counts"].decode("ascii")


BAD_SEGMENTATIONS = {
    "polygon-beyond-image": ([[1, 1, 30, 1, 30, 8]], r"x spans 1\.\.30, beyond the image's 10x20"),
    "polygon-drawn-for-a-bigger-image": ([[2, 2, 18, 2, 18, 40]], r"y spans 2\.\.40"),
    "polygon-nan": ([[1, 1, float("nan"), 1, 5, 5]], "not a finite number"),  # pycocotools would hang
    "polygon-inf": ([[1, 1, float("inf"), 1, 5, 5]], "not a finite number"),
    "polygon-odd-length": ([[1, 1, 5, 1, 5, 5, 1]], "flat list of x, y numbers"),
    "polygon-not-numbers": ([[1, 1, "a", 1, 5, 5]], "flat list of x, y numbers"),
    "polygon-collinear": ([[1, 1, 5, 5, 9, 9]], "covers no pixel"),
    "polygon-too-short": ([[1, 1, 5, 5]], "no polygon with at least three points"),
    "polygons-empty": ([], "no polygon with at least three points"),
    "rle-other-size": (
        {"size": [20, 10], "counts": [200]},
        r"RLE size .*differs from the image size \[10, 20\]",
    ),
    "rle-counts-short": ({"size": [10, 20], "counts": [3, 2]}, "cover 5 pixels but the 10x20 image has 200"),
    "rle-counts-long": ({"size": [10, 20], "counts": [150, 100]}, "cover 250 pixels"),
    "rle-negative": ({"size": [10, 20], "counts": [-5, 205]}, "non-negative integers"),
    "rle-compressed-short": ({"size": [10, 20], "counts": _compressed(np.ones((4, 5)))}, "cover 20 pixels"),
    "rle-compressed-garbage": ({"size": [10, 20], "counts": "~~ \x7f"}, "malformed at character 0"),
    "rle-empty-mask": ({"size": [10, 20], "counts": [200]}, "covers no pixel"),
    "not-a-segmentation": (42, "should be polygons or an RLE, found int 42"),
}


@pytest.mark.parametrize("case", BAD_SEGMENTATIONS)
def test_bad_segmentation_is_an_error_naming_the_annotation(case):
    segmentation, message = BAD_SEGMENTATIONS[case]
    with pytest.raises(DataError, match=message) as info:
        decode_segmentation(segmentation, 10, 20, WHERE)
    assert str(info.value).startswith(f"{WHERE}: ")


def test_polygon_on_the_border_and_valid_rles_still_decode():
    border = decode_segmentation([[-0.5, -0.5, 20.5, -0.5, 20.5, 10.5, -0.5, 10.5]], 10, 20, WHERE)
    assert border.all()
    mask = np.random.default_rng(3).random((10, 20)) < 0.4
    for counts in (_compressed(mask), _rle_counts(mask)):
        assert np.array_equal(decode_segmentation({"size": [10, 20], "counts": counts}, 10, 20, WHERE), mask)


def test_compressed_rle_check_reads_the_counts_pycocotools_writes():
    rng = np.random.default_rng(4)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        mask = rng.random((h, w)) < rng.random()
        assert _compressed_counts(_compressed(mask).encode(), WHERE) == _rle_counts(mask)


def test_unicode_expression_loads_and_keeps_its_text(writable_real_format):
    text = "café 红色 🍎"
    _edit_refs(writable_real_format, _set_sentence("sent", f"  {text} "))
    dataset = RefCocoDataset(writable_real_format, "refcoco", "train", protocol="all-sentences")
    samples = [dataset[i] for i in range(len(dataset))]
    hits = [s for s in samples if s["queries"][0]["expression"] == text]
    assert len(hits) == 1 and hits[0]["text"] == text


def test_python2_refs_pickle_with_utf8_bytes_reads_as_text(tmp_path):
    # What Python 2's cPickle writes for [{'sent': 'café'}] with a str (bytes) value: SHORT_BINSTRING
    utf8 = "café".encode()
    py2 = b"\x80\x02]q\x00}q\x01U\x04sentq\x02U" + bytes([len(utf8)]) + utf8 + b"q\x03sa."
    path = tmp_path / "refs(unc).p"
    path.write_bytes(py2)
    assert load_plain_pickle(path) == [{"sent": "café"}]


def _edit_narrative(index, edit):
    return lambda narratives: edit(narratives[index])


def _grounded(narrative):
    return next(s for s in narrative["segments"] if s["segment_ids"])


BAD_NARRATIVES = {
    "not-an-object": (
        lambda n: n.__setitem__(1, "a caption"),
        r"narrative #1: should be an object, found str",
    ),
    "no-caption": (
        _edit_narrative(1, lambda r: r.pop("caption")),
        r"narrative #1: field 'caption' is missing",
    ),
    "image-id-text": (
        _edit_narrative(1, lambda r: r.update(image_id="five")),
        r"#1: field 'image_id' should be",
    ),
    "segments-not-objects": (
        _edit_narrative(1, lambda r: r.update(segments=["x"])),
        r"'segments' should be a list",
    ),
    "segment-ids-text": (
        _edit_narrative(1, lambda r: _grounded(r).update(segment_ids=["3000006", "six"])),
        r"narrative #1 \(image_id 501\): phrase 'a blue circle': field 'segment_ids' should be a list of",
    ),
    "blank-utterance": (
        _edit_narrative(1, lambda r: _grounded(r).update(utterance="  ")),
        r"narrative #1 \(image_id 501\): grounded utterance '  ' is empty or whitespace only",
    ),
}


@pytest.mark.parametrize("case", BAD_NARRATIVES)
def test_malformed_narrative_is_a_counted_skip_naming_it_and_the_field(writable_real_format, case):
    edit, message = BAD_NARRATIVES[case]
    pristine = load_png_split(writable_real_format, "val2017")
    _edit_json(writable_real_format, NARRATIVES, edit)
    with pytest.raises(DataError, match=message):
        load_png_split(writable_real_format, "val2017", max_skip_fraction=0.0)
    assert len(load_png_split(writable_real_format, "val2017", max_skip_fraction=0.5)) == len(pristine) - 1


def _panoptic_gray16(path):
    Image.fromarray(np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 257).save(path)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_truncate, "corrupt or truncated image"),
        (_panoptic_gray16, "a panoptic PNG is 8-bit RGB, .* mode I;16"),
    ],
)
def test_broken_panoptic_png_is_an_error_naming_it(writable_real_format, spoil, message):
    narrative = load_png_split(writable_real_format, "val2017")[0]
    spoil(narrative.panoptic_path)
    with pytest.raises(DataError, match=message) as info:
        phrase_masks(narrative)
    assert str(info.value).startswith(f"{narrative.panoptic_path}: ")


def test_unicode_narrative_loads_and_keeps_its_text(writable_real_format):
    def edit(narratives):
        phrase = _grounded(narratives[1])
        narratives[1]["caption"] = narratives[1]["caption"].replace(phrase["utterance"], "un cercle bleu 🍎")
        phrase["utterance"] = "un cercle bleu 🍎"

    _edit_json(writable_real_format, NARRATIVES, edit)
    narrative = next(n for n in load_png_split(writable_real_format, "val2017") if n.index == 1)
    start, end = narrative.phrases[0].span
    assert narrative.caption[start:end] == narrative.phrases[0].utterance == "un cercle bleu 🍎"
