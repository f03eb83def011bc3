"""A cache of SAM image embeddings: the image encoder is frozen, so an image's embedding never changes.

The reference recipe re-encodes every image at every step (SAM ViT-L at 1024 px: about 2.8 TFLOP, a third
of a 7B prefill). With the cache, epochs after the first skip the encoder for every image already seen.

An embedding is keyed by the image's content (its uint8 pixels and shape) and by the encoder (a hash of
its weights, `encoder_fingerprint`), so a changed image or another SAM checkpoint is a miss, never a stale
hit. Two places, chosen by `model.refiner.embedding_cache`:

- `memory`: a dict in the training process, embeddings kept as computed (same values, so a cached run
  trains exactly like an uncached one) but in host memory, not on the GPU the encoder ran on; for
  datasets whose embeddings fit there (256 x 64 x 64 floats, 4 MiB per image at fp32 for real SAM).
- a folder: one fp16 file per image under `FOLDER/<encoder fingerprint>/` (2 MiB for real SAM), written
  to a temporary file and renamed, so DDP ranks and concurrent runs can share one folder; kept across runs.

The cache lives where the refiner runs (the training process of each rank), not in data workers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 (first 16 hex digits) of an image encoder's weights: equal for the same checkpoint."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def image_key(image: torch.Tensor | np.ndarray) -> str:
    """sha256 of an image array (uint8 `(3, H, W)` here, `(H, W, 3)` in the demo): its shape and pixels."""
    pixels = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
    digest = hashlib.sha256(str(tuple(pixels.shape)).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


class SamEmbeddingCache:
    """Embeddings `(C, h, w)` by image, in memory (`folder=None`) or as fp16 files under `folder`."""

    def __init__(self, fingerprint: str, folder: str | os.PathLike | None = None):
        self.fingerprint = fingerprint
        self.folder = None if folder is None else Path(folder) / fingerprint
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    def embeddings(
        self,
        images: Sequence[torch.Tensor],
        encode: Callable[[list[torch.Tensor]], torch.Tensor],
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """`(B, C, h, w)` embeddings of `images` on `device` in `dtype`; `encode` runs once, on the images
        not cached yet (each distinct image once)."""
        keys = [image_key(image) for image in images]
        found = {key: self._load(key) for key in dict.fromkeys(keys)}
        missing = [key for key, value in found.items() if value is None]
        if missing:
            computed = encode([images[keys.index(key)] for key in missing])
            for key, embedding in zip(missing, computed):
                found[key] = embedding
                self._store(key, embedding)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([found[key].to(device, dtype) for key in keys])

    def _load(self, key: str) -> torch.Tensor | None:
        if self.folder is None:
            return self._memory.get(key)
        path = self.folder / f"{key}.pt"
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=True).float()

    def _store(self, key: str, embedding: torch.Tensor) -> None:
        if self.folder is None:
            self._memory[key] = embedding.detach().cpu()
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key}.pt"
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        torch.save(embedding.detach().to("cpu", torch.float16).clone(), partial)
        os.replace(partial, path)
