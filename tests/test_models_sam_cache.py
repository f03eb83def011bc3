"""The SAM image-embedding cache: same embeddings and the same training, the encoder run once per image,
keyed by image content and encoder weights, shared on disk in fp16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flmm.models.sam_cache import SamEmbeddingCache, encoder_fingerprint
from flmm.models.sam_refiner import SamRefiner
from tests.conftest import TOY_CONFIG, ToyWorld, load_tool, logged, read_metrics, toy_overrides


def images(seed: int, count: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, 40 + 8 * i, 48), dtype=torch.uint8, generator=generator)
        for i in range(count)
    ]


@pytest.fixture
def refiner() -> SamRefiner:
    torch.manual_seed(0)
    return SamRefiner(hidden_size=8, num_layers=2, model_type="tiny", embedding_cache="memory").eval()


def test_cached_embeddings_equal_the_encoders_and_encode_each_image_once(refiner: SamRefiner):
    batch = images(0)
    first = refiner.image_embeddings([batch[0], batch[1], batch[0]])
    assert refiner.embedding_cache.misses == 2 and refiner.embedding_cache.hits == 1
    again = refiner.image_embeddings(batch)
    assert refiner.embedding_cache.misses == 3 and refiner.embedding_cache.hits == 3
    # Each image once through the encoder; the values equal its own encoding (up to the batch's kernels).
    expected = torch.cat([refiner.encode_images([image]) for image in batch])
    torch.testing.assert_close(again, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(first[2], first[0]) and torch.equal(again[0], first[0])


def test_a_changed_image_is_a_miss(refiner: SamRefiner):
    image = images(1, 1)[0]
    refiner.image_embeddings([image])
    changed = image.clone()
    changed[0, 0, 0] ^= 1
    refiner.image_embeddings([changed])
    assert refiner.embedding_cache.misses == 2


def test_other_encoder_weights_have_another_fingerprint(refiner: SamRefiner):
    encoder = refiner.sam.image_encoder
    before = encoder_fingerprint(encoder)
    with torch.no_grad():
        encoder.patch_embed.proj.weight[0, 0, 0, 0] += 1e-3
    assert encoder_fingerprint(encoder) != before


def test_the_disk_cache_is_fp16_files_per_encoder_shared_by_later_runs(refiner: SamRefiner, tmp_path: Path):
    fingerprint = encoder_fingerprint(refiner.sam.image_encoder)
    batch = images(2)
    writer = SamEmbeddingCache(fingerprint, tmp_path)
    written = writer.embeddings(batch, refiner.encode_images, torch.device("cpu"), torch.float32)
    files = sorted((tmp_path / fingerprint).glob("*.pt"))
    assert len(files) == 3 and torch.load(files[0], weights_only=True).dtype == torch.float16
    reader = SamEmbeddingCache(fingerprint, tmp_path)

    def no_encoder(_):
        raise AssertionError("the encoder ran although every embedding was on disk")

    read = reader.embeddings(batch, no_encoder, torch.device("cpu"), torch.float32)
    assert reader.hits == 3 and read.dtype == torch.float32
    torch.testing.assert_close(read, written, rtol=1e-3, atol=1e-3)  # fp16 storage


def test_training_with_the_memory_cache_gives_the_same_losses_and_skips_the_encoder(
    toy_world: ToyWorld, tmp_path: Path, monkeypatch
):
    calls = []
    encode = SamRefiner.encode_images
    monkeypatch.setattr(
        SamRefiner, "encode_images", lambda self, imgs: calls.append(len(imgs)) or encode(self, imgs)
    )
    losses, encoded = {}, {}
    for name, extra in (("plain", []), ("cached", ["model.refiner.embedding_cache=memory"])):
        calls.clear()
        # Two whole epochs, no validation: the second sees only images the first has cached.
        overrides = toy_overrides(
            toy_world,
            tmp_path / name,
            "train.epochs=2",
            "train.limit_train_batches=1.0",
            "train.limit_val_batches=0",
            *extra,
        )
        assert load_tool("train").main([str(TOY_CONFIG), *overrides]) == 0
        losses[name] = [value for _, value in logged(read_metrics(tmp_path / name), "train/loss")]
        encoded[name] = sum(calls)
    images_per_epoch = encoded["plain"] // 2
    assert encoded["cached"] == images_per_epoch > 0
    # Epoch 1 is the same computation; in epoch 2 an embedding comes from another batch of the encoder,
    # whose CPU kernels may round differently in the last bits.
    assert len(losses["cached"]) == len(losses["plain"])
    torch.testing.assert_close(
        torch.tensor(losses["cached"]), torch.tensor(losses["plain"]), rtol=1e-4, atol=1e-5
    )
