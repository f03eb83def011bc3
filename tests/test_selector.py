"""The keyword selector: text-token features from the adapter, its loss and F1, joint training, spans."""

from __future__ import annotations

import pytest
import torch

from flmm.config import load_config
from flmm.data.collate import collate_grounding
from flmm.data.splits import build_split_dataset
from flmm.demo.phrases import selected_spans
from flmm.engine.build import build_image_transform, config_to_dict
from flmm.engine.module import GroundingModule
from flmm.models.selector import KeywordSelector, TokenF1, token_counts
from tests.test_engine_train import TOY_CONFIG, build_toy_world, toy_overrides

SELECTOR = ["model.selector.type=KeywordSelector", "model.selector.width=16"]


@pytest.fixture(scope="module")
def module_and_batch(tmp_path_factory):
    """A GroundingModule with a selector on the toy models, and a batch of 4 PNG narratives."""
    root = tmp_path_factory.mktemp("selector")
    world = build_toy_world(root)
    cfg = load_config(TOY_CONFIG, toy_overrides(world, root / "run", *SELECTOR))
    module = GroundingModule(config_to_dict(cfg), val_splits=[])
    dataset = build_split_dataset(
        cfg.data, "png:train2017", "narrative", build_image_transform(module.adapter)
    )
    return module, collate_grounding([dataset[i] for i in range(4)])


def test_adapter_returns_every_text_token_with_its_phrase(module_and_batch):
    module, batch = module_and_batch
    adapter = module.adapter
    encoded = adapter.encode_text(batch["text"], batch["phrase_spans"], batch["pixel_values"])
    out = adapter(
        encoded.input_ids,
        encoded.attention_mask,
        encoded.phrase_ids,
        batch["pixel_values"],
        text_mask=encoded.text_mask,
    )
    counts = encoded.text_mask.sum(dim=1)
    assert out.text_token_mask.sum(dim=1).tolist() == counts.tolist()
    for b in range(len(batch["text"])):
        ids = encoded.phrase_ids[b][encoded.text_mask[b]]
        assert out.text_phrase_ids[b, : counts[b]].tolist() == ids.tolist()
        assert (out.text_phrase_ids[b, counts[b] :] == -1).all()
        # The phrase tokens' hidden states are the same rows, in the same order.
        for p in (out.phrase_batch_index == b).nonzero().flatten().tolist():
            local = p - int((out.phrase_batch_index < b).sum())
            rows = out.hidden_states[p][out.hidden_mask[p]]
            assert torch.allclose(out.text_hidden[b, : counts[b]][ids == local], rows)
    # Offsets point into the texts: the tokens of phrase 0 of sample 0 lie inside its span.
    start, end = batch["phrase_spans"][0][0]
    offsets = encoded.text_offsets[0][encoded.phrase_ids[0] == 0]
    assert (offsets[:, 0] >= start).all() and (offsets[:, 1] <= end).all()


def test_selector_loss_decreases_when_trained_jointly(module_and_batch):
    module, batch = module_and_batch
    module.train()
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        grounded = module.ground(batch)
        loss = module.selector.loss(
            grounded.selector_logits, grounded.selector_labels, grounded.selector_mask
        )
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]
    labels = grounded.selector_labels[grounded.selector_mask]
    assert labels.any() and not labels.all()  # narratives hold both phrase and non-phrase tokens


def test_selector_keys_are_absent_without_a_selector(module_and_batch):
    module, _ = module_and_batch
    assert any(k.startswith("selector.") for k in module.state_dict())
    config = config_to_dict(module.cfg)
    config["model"]["selector"] = None
    plain = GroundingModule(config, val_splits=[])
    assert plain.selector is None and not any(k.startswith("selector.") for k in plain.state_dict())


def test_token_counts_and_f1():
    selected = torch.tensor([[True, True, False, False, True]])
    labels = torch.tensor([[True, False, True, False, True]])
    mask = torch.tensor([[True, True, True, True, False]])
    counts = token_counts(selected, labels, mask)
    assert counts.tolist() == [1, 1, 1, 4]
    metric = TokenF1()
    metric.update(counts)
    metric.update(torch.tensor([1, 0, 0, 2]))
    result = metric.compute()
    assert result["selector_token_F1"] == pytest.approx(100 * 4 / 6)
    assert result["selector_precision"] == pytest.approx(100 * 2 / 3)
    assert result["selector_tokens"] == 6


def test_selector_loss_weighs_every_text_the_same():
    logits = torch.zeros(2, 3)
    labels = torch.tensor([[True, False, False], [True, True, True]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    per_token = torch.nn.functional.binary_cross_entropy_with_logits(torch.zeros(()), torch.ones(()))
    assert KeywordSelector.loss(logits, labels, mask) == pytest.approx(float(per_token))
    selector = KeywordSelector(hidden_size=8, num_layers=3, width=4)
    assert selector(torch.randn(2, 5, 3, 8)).shape == (2, 5)


def test_selected_runs_become_trimmed_spans():
    text = "a red circle, and the sky."
    offsets = [(0, 1), (2, 5), (6, 12), (12, 13), (14, 17), (18, 21), (22, 25), (25, 26)]
    selected = [False, True, True, True, False, False, True, True]
    assert selected_spans(text, selected, offsets) == [(2, 12), (22, 25)]
