"""Every kind of bad input file is a clear error naming the file and field, or a counted skip, never a crash
deep inside PIL, pycocotools or torch; valid images in odd formats load as the right RGB pixels."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from flmm.data.datasets import RefCocoDataset
from flmm.data.image_io import load_rgb
from flmm.data.png import load_png_split, phrase_masks
from flmm.data.refcoco import _compressed_counts, decode_segmentation, load_refer_split
from flmm.data.safe_pickle import load_plain_pickle
from flmm.data.synthetic import SyntheticConfig, _rle_counts, generate_world
from flmm.errors import ConfigError, DataError
from flmm.models.sam_build import PATCH_EMBED_KEY, build_sam, build_tiny_sam, checkpoint_model_type
from tests.faults.bad_inputs import KINDS, bomb_png, break_records

REFS = "coco/refcoco/refs(unc).p"
INSTANCES = "coco/refcoco/instances.json"
NARRATIVES = "coco/annotations/png_coco_val2017.json"
WHERE = "instances.json: ann_id 7"


def _jpeg(path, hw=(12, 16)):
    rgb = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG")
    return path


def _load_in_thread(path, expected_hw):
    """load_rgb in a thread, so that a loader that blocks (on a FIFO) fails the test instead of hanging."""
    outcome = {}

    def target():
        try:
            outcome["array"] = load_rgb(path, expected_hw)
        except DataError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), f"load_rgb blocked on {path}"
    return outcome


def _plant_corrupt(path):
    path.write_bytes(_jpeg(path).read_bytes()[:20] + b"\x00garbage" * 40)


def _plant_truncated_jpeg(path):
    path.write_bytes(_jpeg(path).read_bytes()[:300])


def _plant_truncated_png(path):
    rgb = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[:300])


def _plant_fifo(path):
    os.mkfifo(path)


def _plant_unreadable(path):
    if os.geteuid() == 0:
        pytest.skip("running as root: root reads a file whatever its permission bits")
    _jpeg(path).chmod(0)


def _plant_broken_link(path):
    path.symlink_to(path.parent / "gone.jpg")


BROKEN_IMAGES = {
    "corrupt": (_plant_corrupt, "corrupt or truncated image"),
    "truncated-jpeg": (_plant_truncated_jpeg, "corrupt or truncated image"),
    "truncated-png": (_plant_truncated_png, "corrupt or truncated image"),
    "empty": (lambda p: p.write_bytes(b""), r"image file is empty \(0 bytes\)"),
    "bomb": (lambda p: p.write_bytes(bomb_png()), "decompression bomb.*900000000 pixels"),
    "missing": (lambda p: None, "image file not found"),
    "broken-link": (_plant_broken_link, r"not found \(a broken symbolic link\)"),
    "directory": (lambda p: p.mkdir(), "is a directory"),
    "fifo": (_plant_fifo, "not a regular file"),
    "unreadable": (_plant_unreadable, "cannot read the image file.*ermission denied"),
    "other-size": (lambda p: _jpeg(p, (10, 10)), "image is 10x10 .*annotation says 12x16"),
}


@pytest.mark.parametrize("kind", BROKEN_IMAGES)
def test_broken_image_is_a_data_error_naming_the_file_and_the_problem(tmp_path, kind):
    plant, problem = BROKEN_IMAGES[kind]
    path = tmp_path / "COCO_train2014_000000000007.jpg"
    plant(path)
    outcome = _load_in_thread(path, (12, 16))
    assert "error" in outcome, f"{kind}: no DataError, got {outcome}"
    message = str(outcome["error"])
    assert message.startswith(f"{path}: ")
    assert re.search(problem, message), message


def _saved(tmp_path, img, fmt, **options):
    path = tmp_path / f"odd.{fmt.lower()}"
    img.save(path, format=fmt, **options)
    return path


GRAY = np.array([[0, 1, 127], [128, 254, 255]], dtype=np.uint8)


def _case_gray():
    return Image.fromarray(GRAY), "PNG", {}, np.repeat(GRAY[..., None], 3, -1)


def _case_gray_alpha():
    img = Image.merge("LA", [Image.fromarray(GRAY), Image.fromarray(255 - GRAY)])
    return img, "PNG", {}, np.repeat(GRAY[..., None], 3, -1)


def _case_palette_with_transparency():
    index = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    palette = np.array([[10, 20, 30], [200, 100, 0], [5, 250, 128]], dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette.reshape(-1).tolist())
    return img, "PNG", {"transparency": 0}, palette[index]


def _case_rgba():
    rgba = np.random.default_rng(2).integers(0, 256, (2, 3, 4), dtype=np.uint8)
    return Image.fromarray(rgba, "RGBA"), "PNG", {}, rgba[..., :3]


def _case_cmyk_jpeg():
    # flat 8x8 blocks, so JPEG's loss stays a few levels
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:8, :8], rgb[:8, 8:], rgb[8:, :8], rgb[8:, 8:] = (
        (200, 30, 30),
        (30, 200, 30),
        (30, 30, 200),
        (250,) * 3,
    )
    return Image.fromarray(rgb).convert("CMYK"), "JPEG", {"quality": 100, "subsampling": 0}, rgb


def _case_one_bit():
    bits = GRAY > 127
    return Image.fromarray(bits), "PNG", {}, np.repeat(np.where(bits, 255, 0)[..., None], 3, -1)


def _case_gray16():
    values = np.array([[0, 0x00FF, 0x0100], [0x8000, 0xFEFF, 0xFFFF]], dtype=np.uint16)
    expected = np.array([[0, 0, 1], [128, 254, 255]], dtype=np.uint8)  # value >> 8, not clipped at 255
    return Image.fromarray(values), "PNG", {}, np.repeat(expected[..., None], 3, -1)


def _case_int32():
    values = np.array([[-5, 255, 256], [0x8000, 0xFFFF, 1 << 20]], dtype=np.int32)
    expected = np.array([[0, 0, 1], [128, 255, 255]], dtype=np.uint8)  # 16-bit range, clipped
    return Image.fromarray(values, "I"), "TIFF", {}, np.repeat(expected[..., None], 3, -1)


def _case_float():
    values = np.array([[0.0, 0.25, 1.0], [2.0, -1.0, np.nan]], dtype=np.float32)
    expected = np.array([[0, 64, 255], [255, 0, 0]], dtype=np.uint8)  # 0..1, clipped, NaN as 0
    return Image.fromarray(values, "F"), "TIFF", {}, np.repeat(expected[..., None], 3, -1)


ODD_IMAGES = {
    "L": _case_gray,
    "LA": _case_gray_alpha,
    "P": _case_palette_with_transparency,
    "RGBA": _case_rgba,
    "CMYK": _case_cmyk_jpeg,
    "1": _case_one_bit,
    "I;16": _case_gray16,
    "I": _case_int32,
    "F": _case_float,
}


@pytest.mark.parametrize("mode", ODD_IMAGES)
def test_valid_image_of_an_odd_mode_becomes_the_right_rgb_uint8(tmp_path, mode):
    img, fmt, options, expected = ODD_IMAGES[mode]()
    path = _saved(tmp_path, img, fmt, **options)
    with Image.open(path) as reopened:
        assert reopened.mode == mode  # the file really is in the mode under test
    array = load_rgb(path, expected_hw=expected.shape[:2])
    assert array.dtype == np.uint8 and array.shape == expected.shape
    tolerance = 6 if fmt == "JPEG" else 0
    assert np.abs(array.astype(int) - expected.astype(int)).max() <= tolerance


def test_unicode_file_name_loads_and_is_named_in_errors(tmp_path):
    good = _jpeg(tmp_path / "café 红色 🍎.jpg")
    assert load_rgb(good, (12, 16)).shape == (12, 16, 3)
    bad = tmp_path / "épave 坏 💥.jpg"
    bad.write_bytes(b"no image here")
    with pytest.raises(DataError) as info:
        load_rgb(bad)
    assert str(info.value).startswith(f"{bad}: corrupt or truncated image")


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


def _fake_sam_checkpoint(path, width):
    torch.save({PATCH_EMBED_KEY: torch.zeros(width, 3, 16, 16)}, path)
    return str(path)


@pytest.mark.parametrize(
    ("width", "held", "configured"),
    [(768, "vit_b", "vit_l"), (1024, "vit_l", "vit_h"), (1280, "vit_h", "vit_b"), (32, "tiny", "vit_l")],
)
def test_sam_checkpoint_of_another_size_names_the_file_and_both_sizes(tmp_path, width, held, configured):
    checkpoint = _fake_sam_checkpoint(tmp_path / f"sam_{held}.pth", width)
    with pytest.raises(ConfigError) as info:
        build_sam(configured, checkpoint)
    message = str(info.value)
    assert (
        f"model.refiner.checkpoint={checkpoint} holds SAM {held} weights (image encoder width {width})"
        in message
    )
    assert f"model.refiner.model_type={configured}; set model.refiner.model_type={held}" in message


def test_tiny_configured_with_official_weights_is_refused_before_building(tmp_path):
    checkpoint = _fake_sam_checkpoint(tmp_path / "sam_vit_l_0b3195.pth", 1024)
    with pytest.raises(ConfigError, match=r"holds SAM vit_l weights .*model_type=tiny"):
        build_sam("tiny", checkpoint)


def test_checkpoint_model_type_reads_the_patch_embedding_width():
    sizes = {
        w: checkpoint_model_type({PATCH_EMBED_KEY: torch.empty(w, 3, 1, 1)})
        for w in (768, 1024, 1280, 32, 99)
    }
    assert sizes == {768: "vit_b", 1024: "vit_l", 1280: "vit_h", 32: "tiny", 99: None}
    assert checkpoint_model_type(build_tiny_sam().state_dict()) == "tiny"


def _write_bytes(path):
    path.write_bytes(b"PK\x03\x04 this is no checkpoint")


NOT_SAM = {
    "random-bytes": (_write_bytes, "is not a loadable PyTorch checkpoint"),
    "other-state-dict": (
        lambda p: torch.save({"fc.weight": torch.zeros(2)}, p),
        r"is not a SAM checkpoint.*fc\.weight",
    ),
    "a-list": (lambda p: torch.save([1, 2], p), r"is not a SAM checkpoint.*found list"),
    "unknown-width": (
        lambda p: _fake_sam_checkpoint(p, 99),
        r"holds weights of no known SAM size \(.*width 99\)",
    ),
}


@pytest.mark.parametrize("case", NOT_SAM)
def test_file_that_is_not_a_sam_checkpoint_is_a_config_error_naming_it(tmp_path, case):
    write, message = NOT_SAM[case]
    path = tmp_path / "sam.pth"
    write(path)
    with pytest.raises(ConfigError, match=message) as info:
        build_sam("vit_l", str(path))
    assert f"model.refiner.checkpoint={path} " in str(info.value)


def test_checkpoint_that_does_not_fit_names_the_tensors(tmp_path):
    state = build_tiny_sam().state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(1, 1)
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError) as info:
        build_sam("tiny", str(path))
    message = str(info.value)
    assert message.startswith(f"model.refiner.checkpoint={path} does not fit SAM tiny: tensors ")
    assert "1 missing (e.g. ['mask_decoder.iou_token.weight'])" in message
    assert "1 unexpected (e.g. ['extra.weight'])" in message
    assert "1 of another shape (e.g. ['mask_decoder.mask_tokens.weight'])" in message


@pytest.fixture(scope="module")
def pristine_world(tmp_path_factory):
    """A 24-image synthetic world (about 18 refcoco:train images), generated once for the module."""
    root = tmp_path_factory.mktemp("world")
    generate_world(root, SyntheticConfig(seed=0, n_res_images=24, n_png_images=0, size=64, max_objects=3))
    return root


@pytest.fixture
def broken_world(pristine_world, tmp_path):
    root = tmp_path / "world"
    shutil.copytree(pristine_world, root)
    return root, break_records(root)


def test_catalogue_is_deterministic_and_breaks_distinct_files(pristine_world, broken_world, tmp_path):
    root, records = broken_world
    again = tmp_path / "again"
    shutil.copytree(pristine_world, again)
    assert [(r.kind, r.path.relative_to(root)) for r in records] == [
        (r.kind, r.path.relative_to(again)) for r in break_records(again)
    ]
    assert [r.kind for r in records] == list(KINDS)
    assert len({r.path for r in records}) == len({r.image_id for r in records}) == len(KINDS)
    assert all(r.affects["refcoco:train"] >= len(r.ref_ids) >= 1 for r in records)


def test_catalogue_outcomes_are_what_the_loader_does(pristine_world, broken_world):
    root, records = broken_world
    for record in records:
        original = load_rgb(pristine_world / record.path.relative_to(root), record.hw)
        if record.outcome == "skip":
            with pytest.raises(DataError) as info:
                load_rgb(record.path, record.hw)
            assert str(info.value).startswith(f"{record.path}: "), record.kind
            continue
        array = load_rgb(record.path, record.hw)
        gray = np.asarray(Image.fromarray(original).convert("L"))
        if record.kind == "gray16":  # loaded right, its top byte is exactly the 8-bit gray
            assert np.array_equal(array, np.repeat(gray[..., None], 3, -1))
        reference = gray[..., None] if record.kind in ("grayscale", "gray16") else original
        assert np.abs(array.astype(int) - reference).mean() < 12, record.kind


def test_training_over_the_broken_world_skips_the_broken_images_and_keeps_the_odd_ones(broken_world):
    root, records = broken_world
    dataset = RefCocoDataset(root, "refcoco", "train", protocol="train", max_skip_fraction=1.0)
    seen = {dataset[i]["image_id"] for i in range(len(dataset))}
    pristine_images = len(load_refer_split(root, "refcoco", "train").objects_by_image())
    assert len(dataset) == pristine_images - sum(r.stage == "build" for r in records)
    assert not seen & {r.image_id for r in records if r.outcome == "skip"}
    assert seen >= {r.image_id for r in records if r.outcome == "loads"}


def test_catalogue_on_the_fixture_lists_the_other_splits_an_image_serves(writable_real_format):
    kinds = ["corrupt", "missing", "gray16"]
    records = break_records(writable_real_format, kinds)
    refs = pickle.loads((writable_real_format / REFS).read_bytes())
    for record in records:
        val = sum(
            len(r["sentences"]) for r in refs if r["image_id"] == record.image_id and r["split"] == "val"
        )
        assert record.affects.get("refcoco:val", 0) == val
        assert set(record.affects) > {"refcoco:train", "refcoco+:train", "refcocog:train"}
    with pytest.raises(ValueError, match="refcoco:train has 8 distinct image files; 11 kinds and 1 intact"):
        break_records(writable_real_format, list(KINDS))
