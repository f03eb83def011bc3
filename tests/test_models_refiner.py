"""SAM refiner on a tiny SAM: import without torchvision, frozen encoder, prompts, batched decoding, sizes."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flmm.errors import ConfigError, MissingWeightsError
from flmm.models.sam_build import build_sam
from flmm.models.sam_import import _caused_by_torchvision
from flmm.models.sam_refiner import SamRefiner, decode_masks
from flmm.registry import MODELS

HIDDEN, LAYERS = 24, 3


def make_refiner() -> SamRefiner:
    torch.manual_seed(0)
    return SamRefiner(hidden_size=HIDDEN, num_layers=LAYERS, model_type="tiny")


def make_batch(phrases_per_image=(2, 0, 3), sizes=((50, 80), (64, 64), (90, 40)), token_counts=None):
    """Images of different sizes; phrases with coarse maps at their image's aspect and varied token counts."""
    generator = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]
    image_index = torch.tensor([b for b, n in enumerate(phrases_per_image) for _ in range(n)])
    coarse = [
        torch.randn(sizes[b][0] // 5, sizes[b][1] // 5, generator=generator).requires_grad_()
        for b in image_index.tolist()
    ]
    p = len(coarse)
    token_counts = token_counts or [1 + i % 3 for i in range(p)]
    hidden = torch.randn(p, max(token_counts), LAYERS, HIDDEN, generator=generator)
    hidden_mask = torch.arange(max(token_counts))[None] < torch.tensor(token_counts)[:, None]
    return images, coarse, image_index, hidden * hidden_mask[..., None, None], hidden_mask


def test_sam_modeling_imports_through_the_helper_without_torchvision():
    code = (
        "import sys\n"
        # Absent here, present on most GPU machines: block it, so the fallback runs on both.
        "sys.modules['torchvision'] = None\n"
        "from flmm.models.sam_import import Sam, MaskDecoder, sam_model_registry\n"
        "assert 'segment_anything.modeling' in sys.modules and sys.modules['torchvision'] is None\n"
        "assert Sam.__module__ == 'segment_anything.modeling.sam'\n"
        "assert not hasattr(sys.modules['segment_anything'], 'SamPredictor')\n"
        "assert set(sam_model_registry) >= {'vit_b', 'vit_l', 'vit_h'}\n"
        "from segment_anything import sam_model_registry as registry\n"
        "assert registry is sam_model_registry\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_only_torchvision_failures_trigger_the_fallback_import():
    assert _caused_by_torchvision(ModuleNotFoundError("no torchvision", name="torchvision"))
    assert _caused_by_torchvision(ModuleNotFoundError("no ops", name="torchvision.ops"))
    assert not _caused_by_torchvision(ModuleNotFoundError("no numpy", name="numpy"))


def test_tiny_sam_embeds_each_image_once():
    refiner = make_refiner()
    images, *_ = make_batch()
    embeddings = refiner.encode_images(images)
    assert embeddings.shape == (3, 32, 16, 16)
    assert not embeddings.requires_grad


def test_preprocess_resizes_the_longest_side_and_pads_bottom_right():
    refiner = make_refiner()
    image = torch.full((3, 50, 80), 200, dtype=torch.uint8)
    x = refiner.preprocess(image)
    assert x.shape == (3, 128, 128)
    assert refiner.input_size(50, 80) == (80, 128)
    expected = (200 - refiner.sam.pixel_mean) / refiner.sam.pixel_std
    torch.testing.assert_close(x[:, :80], expected.expand(3, 80, 128))
    assert torch.all(x[:, 80:] == 0)
    with pytest.raises(ValueError, match="uint8 RGB"):
        refiner.preprocess(torch.zeros(1, 10, 10, dtype=torch.uint8))


def test_image_encoder_is_frozen_and_the_rest_trains():
    refiner = make_refiner()
    encoder = refiner.sam.image_encoder
    assert not any(p.requires_grad for p in encoder.parameters())
    refiner.train()
    assert not encoder.training and refiner.sam.mask_decoder.training
    before = {k: v.clone() for k, v in refiner.state_dict().items()}
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=1e-2, weight_decay=0.1)
    out = refiner(*make_batch())
    sum(m.sigmoid().mean() for m in out.masks).backward()
    optimizer.step()
    after = refiner.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("sam.image_encoder."))
    for trained in ("sam.prompt_encoder.mask_downscaling.0.weight", "sam.mask_decoder.iou_token.weight"):
        assert not torch.equal(before[trained], after[trained])


def test_every_trainable_parameter_and_the_coarse_logits_get_gradients():
    refiner = make_refiner()
    images, coarse, image_index, hidden, hidden_mask = make_batch()
    out = refiner(images, coarse, image_index, hidden, hidden_mask)
    sum(m.sigmoid().mean() for m in out.masks).backward()
    trainable = {n: p for n, p in refiner.named_parameters() if p.requires_grad}
    assert any(n.startswith("sam.prompt_encoder.") for n in trainable)
    assert any(n.startswith("sam.mask_decoder.") for n in trainable)
    assert {n for n, p in trainable.items() if p.grad is None or not p.grad.any()} == set()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in coarse)


def test_decode_masks_equals_sams_decoder_run_per_prompt():
    refiner = make_refiner()
    decoder, pe = refiner.sam.mask_decoder, refiner.sam.prompt_encoder.get_dense_pe()
    generator = torch.Generator().manual_seed(2)
    embeddings = torch.randn(2, 32, 16, 16, generator=generator)
    image_index = torch.tensor([1, 0, 1, 1])
    sparse = torch.randn(4, 5, 32, generator=generator)
    dense = torch.randn(4, 32, 16, 16, generator=generator)
    with torch.no_grad():
        masks, iou = decode_masks(decoder, embeddings[image_index], pe, sparse, dense)
        for p, b in enumerate(image_index.tolist()):
            ref_masks, ref_iou = decoder(
                embeddings[b : b + 1], pe, sparse[p : p + 1], dense[p : p + 1], False
            )
            torch.testing.assert_close(masks[p : p + 1], ref_masks, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(iou[p : p + 1], ref_iou, rtol=1e-5, atol=1e-5)


def test_grouped_forward_equals_sam_run_phrase_by_phrase():
    refiner = make_refiner().eval()
    images, coarse, image_index, hidden, hidden_mask = make_batch(token_counts=[2, 0, 3, 1, 2])
    sam = refiner.sam
    with torch.no_grad():
        out = refiner(images, coarse, image_index, hidden, hidden_mask)
        embeddings = refiner.encode_images(images)
        tokens = refiner.language_tokens(hidden)
        for p, b in enumerate(image_index.tolist()):
            input_size = refiner.input_size(*images[b].shape[-2:])
            box = refiner.box_prompt(coarse[p], tuple(images[b].shape[-2:]), input_size)
            mask = refiner.mask_prompt(coarse[p], input_size)
            box_tokens, dense = sam.prompt_encoder(points=None, boxes=box[None], masks=mask[None, None])
            sparse = torch.cat([box_tokens, tokens[p][hidden_mask[p]][None]], dim=1)
            ref, _ = sam.mask_decoder(
                embeddings[b : b + 1], sam.prompt_encoder.get_dense_pe(), sparse, dense, False
            )
            torch.testing.assert_close(out.low_res_logits[p], ref[0, 0], rtol=1e-5, atol=1e-5)
            full = sam.postprocess_masks(ref, input_size, tuple(images[b].shape[-2:]))
            torch.testing.assert_close(out.masks[p], full[0, 0], rtol=1e-5, atol=1e-5)


def test_refined_masks_have_each_images_original_size():
    refiner = make_refiner()
    images, coarse, image_index, hidden, hidden_mask = make_batch(phrases_per_image=(1, 3, 2))
    out = refiner(images, coarse, image_index, hidden, hidden_mask)
    assert [tuple(m.shape) for m in out.masks] == [(50, 80), (64, 64), (64, 64), (64, 64), (90, 40), (90, 40)]
    assert out.low_res_logits.shape == (6, 64, 64)
    assert out.iou_predictions.shape == (6,)


def test_cached_embeddings_give_the_same_result():
    refiner = make_refiner().eval()
    batch = make_batch()
    with torch.no_grad():
        direct = refiner(*batch)
        cached = refiner(*batch, image_embeddings=refiner.encode_images(batch[0]))
    torch.testing.assert_close(direct.low_res_logits, cached.low_res_logits)


def test_box_prompt_of_an_empty_coarse_mask_is_the_whole_image_in_sams_frame():
    refiner = make_refiner()
    box = refiner.box_prompt(torch.full((10, 16), -3.0), (50, 80), refiner.input_size(50, 80))
    torch.testing.assert_close(box, torch.tensor([0.0, 0.0, 128.0, 80.0]))


def test_box_prompt_is_found_at_the_original_size_and_scaled_to_sams_frame():
    refiner = make_refiner()
    logits = torch.full((10, 16), -5.0)
    logits[:5, :8] = 5.0  # the top-left quarter of a 50x80 image
    box = refiner.box_prompt(logits, (50, 80), (80, 128))
    torch.testing.assert_close(box, torch.tensor([0.0, 0.0, 64.0, 40.0]), atol=128 / 80 * 2, rtol=0)


def test_mask_prompt_fills_the_content_extent_and_pads_with_min_of_minus_one_and_the_logits():
    refiner = make_refiner()
    prompt = refiner.mask_prompt(torch.full((10, 16), 2.0), refiner.input_size(50, 80))
    assert prompt.shape == (64, 64)
    assert torch.all(prompt[:40] == 2.0) and torch.all(prompt[40:] == -1.0)
    logits = torch.full((10, 16), 2.0)
    logits[0, 0] = -5.0
    assert refiner.mask_prompt(logits, (80, 128))[50, 0] == -5.0


def test_missing_checkpoint_says_what_to_download_and_where():
    with pytest.raises(MissingWeightsError, match=r"not found at /nowhere/sam\.pth.*sam_vit_l_0b3195\.pth"):
        build_sam("vit_l", "/nowhere/sam.pth")
    with pytest.raises(FileNotFoundError, match=r"none is configured.*model\.refiner\.checkpoint"):
        SamRefiner(hidden_size=HIDDEN, num_layers=LAYERS, model_type="vit_b")
    with pytest.raises(ConfigError, match="vit_x"):
        build_sam("vit_x")


def test_checkpoint_is_loaded(tmp_path):
    torch.manual_seed(3)
    source = build_sam("tiny")
    path = tmp_path / "tiny_sam.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(4)
    loaded = build_sam("tiny", str(path))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())


def test_refiner_builds_from_a_registry_config():
    refiner = MODELS.build(dict(type="SamRefiner", hidden_size=8, num_layers=2, model_type="tiny"))
    assert isinstance(refiner, SamRefiner)
    assert refiner.text_proj.out_features == 32
