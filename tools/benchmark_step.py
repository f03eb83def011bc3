"""Benchmark one grounding step at a given LMM architecture (random weights): plain vs hooked vs eager.

    python tools/benchmark_step.py [--preset toy|llava7b] [--device cpu|cuda] [--dtype float32|bfloat16]
        [--batch 2] [--phrases 3] [--refiner none|tiny|vit_b|vit_l|vit_h] [--repeats 3] [key=value ...]

Builds a LLaVA-1.5 of the preset's sizes with random weights (no download), wraps it in the same adapter
as real checkpoints, and for each capture mode times the frozen LMM forward with capture and one whole
training step (LMM forward, U-Net, SAM refiner, losses, backward, AdamW step), and reports the peak memory
(CUDA: max allocated during the mode's runs; CPU: peak resident set of the process so far, so it only
grows from row to row). `plain` is the same forward without capture under the model's own sdpa kernel (no
training step): the baseline of the `forward / plain` column. Prints a table. `key=value` arguments change
the preset's sizes, e.g. `text.num_hidden_layers=2` for a slice of the 7B's depth.
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flmm.cli import parse_with_overrides
from flmm.lmm import LlavaAdapter
from flmm.lmm.tiny import llava_parts
from flmm.models.grounding import GroundingModel
from flmm.models.losses import grounding_losses
from flmm.models.mask_head import UNetMaskHead
from flmm.models.sam_import import sam_model_registry
from flmm.models.sam_refiner import SamRefiner

PRESETS = {
    # The embedded default's toy LLaVA.
    "toy": {
        "vision": {"image_size": 64, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128,
                   "num_hidden_layers": 2, "num_attention_heads": 4},
        "text": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
                 "num_attention_heads": 4, "num_key_value_heads": 4},
    },
    # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px (24x24 grid) + Vicuna-7B (32 layers x 32 heads).
    "llava7b": {
        "vision": {"image_size": 336, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
                   "num_hidden_layers": 24, "num_attention_heads": 16, "projection_dim": 768},
        "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
                 "vocab_size": 32064, "rms_norm_eps": 1e-5},
    },
}  # fmt: skip
WORDS = ["the", "red", "circle", "left", "of", "a", "small", "blue"]
WORDS += ["square", "above", "green", "triangle", "on", "right"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def _batch(batch: int, phrases: int, side: int, device: torch.device) -> dict:
    """Random images of 480x640, pixel values of `side`, and `phrases` phrases of 4 words per sample."""
    texts, spans = [], []
    for b in range(batch):
        words = [WORDS[(b + k) % len(WORDS)] for k in range(4 * phrases)]
        text, sample_spans, cursor = "", [], 0
        for p in range(phrases):
            phrase = " ".join(words[4 * p : 4 * p + 4])
            sample_spans.append((cursor, cursor + len(phrase)))
            text += phrase + ". "
            cursor = len(text)
        texts.append(text.strip())
        spans.append(sample_spans)
    h, w = 480, 640
    resized_h = side * h // w
    pad_top = (side - resized_h) // 2
    pads = {"pad_top": pad_top, "pad_bottom": side - resized_h - pad_top, "pad_left": 0, "pad_right": 0}
    meta = {"orig_h": h, "orig_w": w, "resized_h": resized_h, "resized_w": side, "size": side, **pads}
    return {
        "text": texts,
        "phrase_spans": spans,
        "pixel_values": torch.randn(batch, 3, side, side, device=device),
        "images": [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device=device) for _ in range(batch)],
        "pad_meta": [meta] * batch,
        "masks": [torch.rand(phrases, h, w, device=device) > 0.8 for _ in range(batch)],
    }


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return 1000 * (time.perf_counter() - start) / repeats


def measure(capture: str, config, processor, args: argparse.Namespace) -> tuple:
    """(capture, sequence length, forward ms, train step ms or nan, peak GiB) for one capture mode."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device(device):
        lmm = LlavaAdapter.model_class._from_config(config, dtype=dtype)
    plain = capture == "plain"
    # The plain run builds its inputs with a hooked adapter around a copy, and times the untouched model.
    adapter = LlavaAdapter(
        copy.deepcopy(lmm) if plain else lmm, capture="hooked" if plain else capture, processor=processor
    )
    text = lmm.config.text_config
    refiner = None
    if args.refiner != "none":
        sam = sam_model_registry[args.refiner]() if args.refiner != "tiny" else None
        refiner = SamRefiner(text.hidden_size, text.num_hidden_layers, model_type=args.refiner, sam=sam)
    model = GroundingModel(UNetMaskHead(text.num_hidden_layers * text.num_attention_heads), refiner).to(
        device
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = _batch(args.batch, args.phrases, lmm.config.vision_config.image_size, device)
    images = [{"pixel_values": pixels} for pixels in batch["pixel_values"]]
    encoded = adapter.encode_text(batch["text"], batch["phrase_spans"], images)
    inputs = (encoded.input_ids, encoded.attention_mask, encoded.phrase_ids, images)
    targets = [m for masks in batch["masks"] for m in masks]

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = adapter(*inputs)
            pred = model(
                out.attention,
                out.phrase_batch_index,
                batch["pad_meta"],
                batch["images"],
                out.hidden_states,
                out.hidden_mask,
            )
            loss = grounding_losses(pred.coarse, pred.refined, targets)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if plain:
        kwargs = adapter.model_inputs(encoded.input_ids, encoded.attention_mask, images)
        kwargs.update(use_cache=False, output_hidden_states=True, logits_to_keep=1)
        with torch.no_grad():
            forward_ms = _time(lambda: lmm(**kwargs), device, args.repeats)
        return capture, encoded.input_ids.shape[1], forward_ms, float("nan"), _peak_gib(device)
    forward_ms = _time(lambda: adapter(*inputs), device, args.repeats)
    step_ms = _time(train_step, device, args.repeats)
    return capture, encoded.input_ids.shape[1], forward_ms, step_ms, _peak_gib(device)


def preset_sizes(preset: str, overrides: list[str]) -> dict:
    """The sizes of `preset` with `vision.x=...` / `text.x=...` overrides; ValueError for an unknown key."""
    sizes = OmegaConf.create(PRESETS[preset])
    OmegaConf.set_struct(sizes, True)
    try:
        return OmegaConf.to_container(OmegaConf.merge(sizes, OmegaConf.from_dotlist(overrides)))
    except OmegaConfBaseException as exc:
        raise ValueError(
            f"override {getattr(exc, 'full_key', '')!r}: not a size of preset {preset}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--capture", default="plain,hooked,eager", help="comma-separated: plain, hooked, eager"
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--phrases", type=int, default=3)
    parser.add_argument("--refiner", choices=["none", "tiny", "vit_b", "vit_l", "vit_h"], default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_with_overrides(parser, argv, "text.num_hidden_layers=2")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available on this machine", file=sys.stderr)
        return 2
    try:
        sizes = preset_sizes(args.preset, args.overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config, processor = llava_parts(sizes, corpus=[" ".join(WORDS)])
    rows = []
    for capture in args.capture.split(","):
        rows.append(measure(capture, config, processor, args))
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"\npreset={args.preset} device={args.device} dtype={args.dtype} batch={args.batch} "
          f"phrases/sample={args.phrases} refiner={args.refiner}")  # fmt: skip
    baseline = next((row[2] for row in rows if row[0] == "plain"), float("nan"))
    print("| capture | seq len | LMM forward (ms) | forward / plain | train step (ms) | peak memory (GiB) |")
    print("|---|---|---|---|---|---|")
    for capture, seq, forward_ms, step_ms, peak in rows:
        ratio = forward_ms / baseline
        print(f"| {capture} | {seq} | {forward_ms:.1f} | {ratio:.2f} | {step_ms:.1f} | {peak:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
