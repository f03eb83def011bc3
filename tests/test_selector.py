"""The keyword selector: text-token features from the adapter, its loss and F1, joint training, spans."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from flmm.config import load_config
from flmm.data.collate import collate_grounding
from flmm.data.splits import build_split_dataset
from flmm.demo.phrases import selected_spans
from flmm.engine.build import config_to_dict
from flmm.engine.evaluate import evaluate
from flmm.engine.module import GroundingModule
from flmm.models.selector import KeywordSelector, TokenF1, token_counts
from tests.conftest import TOY_CONFIG, build_toy_world, toy_overrides

SELECTOR = ["model.selector.type=KeywordSelector", "model.selector.width=16"]
VAL_SPLITS = ["refcoco:val", "png:val2017"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Its config, a GroundingModule with a selector on the toy models (validating a RES and a PNG split),
    and the PNG narratives and RefCOCO training samples of its synthetic world."""
    root = tmp_path_factory.mktemp("selector")
    world = build_toy_world(root)
    cfg = load_config(TOY_CONFIG, toy_overrides(world, root / "run", *SELECTOR))
    module = GroundingModule(config_to_dict(cfg), val_splits=VAL_SPLITS)
    transform = module.adapter.image_transform()
    png = build_split_dataset(cfg.data, "png:train2017", "narrative", transform)
    res = build_split_dataset(cfg.data, "refcoco:train", "train", transform)
    return cfg, module, png, res


@pytest.fixture(scope="module")
def module_and_batch(toy):
    """The module and a batch of 4 PNG narratives."""
    _, module, png, _ = toy
    return module, collate_grounding([png[i] for i in range(4)])


def test_adapter_returns_every_text_token_with_its_phrase(module_and_batch):
    module, batch = module_and_batch
    adapter = module.adapter
    encoded = adapter.encode_text(batch["text"], batch["phrase_spans"], batch["lmm_image"])
    out = adapter(
        encoded.input_ids,
        encoded.attention_mask,
        encoded.phrase_ids,
        batch["lmm_image"],
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


def _selector_step(module: GroundingModule, batch: dict):
    """The selector's loss on `batch`, its `(4,)` token counts, and its parameters' gradients."""
    module.zero_grad()
    grounded = module.ground(batch)
    loss = module.selector.loss(grounded.selector_logits, grounded.selector_labels, grounded.selector_mask)
    loss.backward()
    counts = grounded.selector_counts(module.selector.select(grounded.selector_logits.detach()))
    return loss.detach(), counts, [p.grad.clone() for p in module.selector.parameters()]


def test_refcoco_texts_in_a_mixed_batch_teach_the_selector_nothing(toy):
    _, module, png, res = toy
    narrative, expressions, others = png[0], res[0], res[1]
    assert expressions["text"] != others["text"]
    alone_loss, alone_counts, _ = _selector_step(module, collate_grounding([narrative]))
    loss, counts, grads = _selector_step(module, collate_grounding([narrative, expressions]))
    other_loss, other_counts, other_grads = _selector_step(module, collate_grounding([narrative, others]))
    # Only the narrative's tokens are counted, and the loss is its own, weighted 1/B with B = 2 texts.
    assert counts.tolist() == other_counts.tolist() == alone_counts.tolist()
    assert alone_counts[3] > 0
    assert float(loss) == pytest.approx(float(alone_loss) / 2, rel=1e-5)
    assert float(other_loss) == pytest.approx(float(loss), rel=1e-5)
    for grad, other in zip(grads, other_grads, strict=True):
        assert torch.allclose(grad, other, atol=1e-6)
    assert any(bool(g.abs().sum() > 0) for g in grads)


def test_a_batch_of_refcoco_texts_has_no_selector_tokens(toy):
    _, module, _, res = toy
    loss, counts, grads = _selector_step(module, collate_grounding([res[0], res[1]]))
    assert counts.tolist() == [0, 0, 0, 0]
    assert float(loss) == 0.0 and all(bool((g == 0).all()) for g in grads)


def test_selector_f1_is_reported_on_narrative_splits_only(toy, tmp_path):
    cfg, module, _, _ = toy
    results = evaluate(module.eval(), cfg, VAL_SPLITS, ("all-sentences",), tmp_path)
    res = results["splits"]["refcoco:val"]["all-sentences"]
    narrative = results["splits"]["png:val2017"]["narrative"]
    assert not [k for k in res if k.startswith("selector_")]
    assert narrative["selector_tokens"] > 0 and 0.0 <= narrative["selector_token_F1"] <= 100.0
    report = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "png:val2017 (narrative): selector_token_F1" in report
    assert "refcoco:val (all-sentences): selector" not in report


def test_validation_logs_selector_f1_on_narrative_splits_only(toy):
    cfg, module, _, _ = toy
    transform = module.adapter.image_transform()
    loaders = [
        DataLoader(
            build_split_dataset(
                cfg.data, split, "narrative" if split.startswith("png") else "all-sentences", transform
            ),
            batch_size=2,
            collate_fn=collate_grounding,
        )
        for split in VAL_SPLITS
    ]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=2,
    )
    trainer.validate(module, dataloaders=loaders, verbose=False)
    logged = set(trainer.callback_metrics)
    assert "val/png:val2017/selector_token_F1" in logged
    assert "val/refcoco:val/cIoU" in logged and "val/refcoco:val/selector_token_F1" not in logged
