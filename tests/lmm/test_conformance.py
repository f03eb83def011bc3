"""The conformance kit: every LMM family, through the one adapter boundary, does what the boundary promises.

Each test runs once per family of `tests/lmm/builders/` (`BUILDERS`) (tiny offline instances of the real
transformers classes).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from flmm.data.transforms import ProcessorTransform
from flmm.demo.answer import GenerationSettings, generate_answer
from flmm.engine.attend import emitting_ids
from flmm.lmm import adapter_for
from flmm.lmm.adapter import LMMAdapter
from flmm.models.grounding import GroundingModel
from flmm.models.losses import grounding_losses
from flmm.models.mask_head import UNetMaskHead
from flmm.models.sam_refiner import SamRefiner

TEXTS = ["a red dog on the grass", "two small cats and a big blue car near the tall tree"]
# The last phrase of each text ends the sequence.
SPANS = [[(0, 9), (13, 22)], [(0, 14), (19, 33), (34, 52)]]


def _adapter(family, capture: str = "hooked", **kwargs) -> LMMAdapter:
    """An adapter around a private copy of the family's model (capture modes must not share one)."""
    return adapter_for(copy.deepcopy(family.model), processor=family.processor, capture=capture, **kwargs)


def _images(family, seed: int = 0) -> list[np.ndarray]:
    h, w = family.image_hw
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8), rng.integers(0, 255, (w, h, 3), dtype=np.uint8)]


def _by_hand(adapter: LMMAdapter, model, batch: dict) -> list[torch.Tensor]:
    """Per phrase `(L*H, N_b)`: transformers' eager `output_attentions`, phrase-token rows averaged, at the
    sample's image-token columns — the slow, obvious way."""
    inputs = adapter.model_inputs(batch["input_ids"], batch["attention_mask"], batch["images"])
    with torch.no_grad():
        attentions = [a for a in model(**inputs, output_attentions=True).attentions if a is not None]
    expected = []
    for b in range(len(batch["input_ids"])):
        image = (batch["input_ids"][b] == adapter.image_token_id).nonzero().flatten()
        for p in range(int(batch["phrase_ids"][b].max()) + 1):
            tokens = (batch["phrase_ids"][b] == p).nonzero().flatten()
            rows = [a[b][:, tokens][:, :, image].mean(dim=1) for a in attentions]  # (H, N_b) per layer
            expected.append(torch.cat(rows))
    return expected


@pytest.mark.parametrize("capture", ["hooked", "eager"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_token_attention_equals_transformers_eager_attentions(tiny_family, capture, padding_side):
    adapter = _adapter(tiny_family, capture)
    batch = adapter.encode(_images(tiny_family), TEXTS, SPANS, padding_side=padding_side)
    out = adapter(**batch)
    reference = copy.deepcopy(tiny_family.model)
    reference.set_attn_implementation({adapter.text_config_key: "eager"})
    expected = _by_hand(adapter, reference, batch)
    assert out.token_attention.shape[:2] == (5, adapter.num_layers * adapter.num_heads)
    assert out.attention.shape[:2] == (5, adapter.channels)
    assert max(float(e.max()) for e in expected) > 0.05  # peaky enough for the comparison to mean something
    for row, reference_row in enumerate(expected):
        n = reference_row.shape[1]
        torch.testing.assert_close(out.token_attention[row, :, :n], reference_row, atol=2e-6, rtol=1e-4)
        assert torch.all(out.token_attention[row, :, n:] == 0)


@pytest.mark.parametrize("capture", ["hooked", "eager"])
def test_the_authors_emitting_rows_are_eager_attentions_one_position_earlier(tiny_family, capture):
    """attend.variant=authors captures each text token's row at the position before it (`emitting_ids`):
    for every family those rows are transformers' eager attentions there. The one exception is declared: a
    prefix-LM's (`bidirectional_prompt`) first text token is emitted by the prompt's last position, a
    prefix row that hooked capture recomputes causally and may miss (PaliGemma 2 does, PaliGemma 1 does
    not); eager capture gives it exactly."""
    adapter = _adapter(tiny_family, capture)
    batch = adapter.encode(_images(tiny_family), TEXTS, SPANS)
    encoded = adapter.encode_text(TEXTS, SPANS, batch["images"])
    batch["phrase_ids"] = emitting_ids(encoded.text_mask)
    out = adapter(**batch)
    reference = copy.deepcopy(tiny_family.model)
    reference.set_attn_implementation({adapter.text_config_key: "eager"})
    expected = _by_hand(adapter, reference, batch)
    assert len(expected) == int(encoded.text_mask.sum())
    first_rows = encoded.text_mask.sum(dim=1).cumsum(dim=0) - encoded.text_mask.sum(dim=1)
    approximate = set(first_rows.tolist()) if capture == "hooked" and adapter.bidirectional_prompt else set()
    for row, reference_row in enumerate(expected):
        n = reference_row.shape[1]
        close = torch.allclose(out.token_attention[row, :, :n], reference_row, atol=2e-6, rtol=1e-4)
        assert close or row in approximate, f"row {row}"


def test_the_kit_covers_sliding_window_layers_shorter_than_the_sequence(sliding_families):
    """What makes the comparison above cover windows: some family has layers whose window is shorter than
    the kit's sequences."""
    assert sliding_families
    for family in sliding_families:
        config = family.model.config.text_config
        batch = _adapter(family).encode(_images(family), TEXTS, SPANS)
        assert batch["input_ids"].shape[1] > config.sliding_window


def test_hooked_capture_leaves_the_models_outputs_bit_identical(tiny_family):
    adapter = _adapter(tiny_family)
    plain = copy.deepcopy(tiny_family.model)  # its own fast kernel (sdpa), no capture
    batch = adapter.encode(_images(tiny_family), TEXTS, SPANS, padding_side="left")
    out = adapter(**batch)
    inputs = adapter.model_inputs(batch["input_ids"], batch["attention_mask"], batch["images"])
    with torch.no_grad():
        hidden = plain(**inputs, output_hidden_states=True).hidden_states
        logits = plain(**inputs).logits
        assert torch.equal(adapter.lmm(**inputs).logits, logits)
    positions = _phrase_positions(batch, out)
    for layer, states in enumerate(hidden[1:]):
        expected = states[out.phrase_batch_index[:, None], positions]
        assert torch.equal(out.hidden_states[:, :, layer][out.hidden_mask], expected[out.hidden_mask].float())


def _phrase_positions(batch: dict, out) -> torch.Tensor:
    """`(P, T_max)` sequence positions of each phrase's tokens (0 where `hidden_mask` is False)."""
    positions = torch.zeros(out.hidden_mask.shape, dtype=torch.long)
    row = 0
    for ids in batch["phrase_ids"]:
        for p in range(int(ids.max()) + 1):
            tokens = (ids == p).nonzero().flatten()
            positions[row, : len(tokens)] = tokens
            row += 1
    return positions


def _image_token_embeddings(adapter: LMMAdapter, image: np.ndarray) -> torch.Tensor:
    """`(N, D)` what the decoder receives at the image-token positions for one image."""
    batch = adapter.encode([image], ["a dog"], [[(2, 5)]])
    inputs = adapter.model_inputs(batch["input_ids"], batch["attention_mask"], batch["images"])
    seen = {}
    hook = adapter.lmm.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            adapter.lmm(**inputs)
    finally:
        hook.remove()
    return seen["embeds"][0][batch["input_ids"][0] == adapter.image_token_id]


def test_each_image_token_fills_the_cell_its_layout_names(tiny_family):
    """Perturb one image region: in every view, the image token whose input embedding changes most is one
    whose cell covers that region."""
    adapter = _adapter(tiny_family)
    image = _images(tiny_family)[0]
    height, width = image.shape[:2]
    layout = adapter.layout(adapter.image_transform()(image)["lmm_image"])
    rows, cols = layout.view_shapes[0]
    for cell_row, cell_col in [(0, 0), (rows - 1, cols // 2)]:
        y0, y1 = cell_row * height // rows, (cell_row + 1) * height // rows
        x0, x1 = cell_col * width // cols, (cell_col + 1) * width // cols
        perturbed = image.copy()
        perturbed[y0:y1, x0:x1] = 255 - perturbed[y0:y1, x0:x1]
        change = (_image_token_embeddings(adapter, perturbed) - _image_token_embeddings(adapter, image)).norm(
            dim=1
        )
        for view, (view_rows, view_cols) in enumerate(layout.view_shapes):
            in_view = (layout.token_cells[:, 0] == view).nonzero().flatten()
            _, r, c = layout.token_cells[in_view[change[in_view].argmax()]].tolist()
            cell_y = (r * height / view_rows, (r + 1) * height / view_rows)
            cell_x = (c * width / view_cols, (c + 1) * width / view_cols)
            assert cell_y[0] < y1 and y0 < cell_y[1] and cell_x[0] < x1 and x0 < cell_x[1], (view, r, c)


def test_the_model_gets_what_its_own_processor_gives_it(tiny_family):
    adapter = _adapter(tiny_family)
    images = _images(tiny_family)[:1]
    prompt = adapter.prompt()
    batch = adapter.encode(images, ["a red dog"], [[(0, 9)]])
    ours = adapter.model_inputs(batch["input_ids"], batch["attention_mask"], batch["images"])
    if tiny_family.processor_inputs is None:
        theirs = tiny_family.processor(images=images, text=[f"{prompt} a red dog"], return_tensors="pt")
    else:
        theirs = tiny_family.processor_inputs(tiny_family.processor, images, prompt, "a red dog")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert set(theirs) <= set(ours)
    assert ("position_ids" in ours) != adapter.computes_positions  # M-RoPE: positions are the model's own
    if isinstance(adapter.image_transform().transform, ProcessorTransform):
        plain = copy.deepcopy(tiny_family.model)
        with torch.no_grad():
            assert torch.equal(plain(**ours).logits, plain(**theirs).logits)


def test_one_training_step_of_head_and_refiner_runs(tiny_family):
    adapter = _adapter(tiny_family)
    transform = adapter.image_transform()
    images = _images(tiny_family)
    samples = [transform(image) for image in images]
    batch = adapter.encode(images, TEXTS, SPANS)
    out = adapter(**batch)
    text = adapter.text_config()
    head = UNetMaskHead(adapter.channels, channels=[8, 16], size=16)
    model = GroundingModel(head, SamRefiner(text.hidden_size, text.num_hidden_layers, model_type="tiny"))
    pixels = [torch.from_numpy(image).permute(2, 0, 1).contiguous() for image in images]
    pred = model(
        out.attention,
        out.phrase_batch_index,
        [s["pad_meta"] for s in samples],
        pixels,
        out.hidden_states,
        out.hidden_mask,
    )
    targets = [torch.rand(images[b].shape[:2]) > 0.5 for b in out.phrase_batch_index.tolist()]
    loss = grounding_losses(pred.coarse, pred.refined, targets)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and head.logits.weight.grad is not None
    assert all(p.grad is None for p in adapter.lmm.parameters())


def test_the_demos_answer_is_the_models_own_generate(tiny_family):
    adapter = _adapter(tiny_family)
    image = adapter.image_transform()(_images(tiny_family)[0])["lmm_image"]
    prompt = adapter.prompt("what is this?")
    answer = generate_answer(adapter, image, prompt, GenerationSettings(max_new_tokens=5))
    encoded = adapter.encode_text([""], [[]], [image], prompts=[prompt])
    inputs = adapter.model_inputs(encoded.input_ids, encoded.attention_mask, [image])
    inputs.pop("position_ids", None)
    plain = copy.deepcopy(tiny_family.model)
    with torch.no_grad():
        output = plain.generate(**inputs, max_new_tokens=5, do_sample=False, num_beams=1)
    tokenizer = adapter.processor.tokenizer
    expected = tokenizer.decode(output[0, encoded.input_ids.shape[1] :], skip_special_tokens=True).strip()
    assert answer == expected


def test_the_lmm_has_no_trainable_parameter_and_stays_in_eval(tiny_family):
    adapter = _adapter(tiny_family)
    adapter.train()
    assert adapter.training and not any(m.training for m in adapter.lmm.modules())
    assert not any(p.requires_grad for p in adapter.lmm.parameters())
