"""The LightningModule: frozen LMM adapter -> grounding model -> losses, metrics, optimisation.

Only the mask head, the refiner's prompt encoder / mask decoder / language projection and the optional
keyword selector (`model.selector`) train. The LMM and SAM's image encoder are frozen and never stored:
checkpoints hold the trainable weights and the resolved config, and a checkpoint is refused (with a
message) by a run built for another LMM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from flmm.data.collate import has_samples
from flmm.engine.build import build_adapter, build_grounding_model, build_text_component
from flmm.engine.metrics import binarize
from flmm.engine.task_metrics import (
    headline_key,
    main_metric,
    update_main_metric,
    validation_keys,
    without_ignored,
)
from flmm.errors import ConfigError, FlmmError
from flmm.models.grounding import GroundingOutput
from flmm.models.losses import grounding_losses
from flmm.models.mask_head import crop_padding
from flmm.models.selector import TokenF1, token_counts

# State-dict prefixes of the frozen parts that come from their own weight files, never from checkpoints.
FROZEN_PREFIXES = ("adapter.", "model.refiner.sam.image_encoder.")


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear from 0 to 1 over `warmup` steps, then cosine from 1 to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Grounded:
    """One batch through the model: its output, `(P,)` image index of each phrase, and, with a selector,
    its text-token logits `(B, T)`, labels `(B, T)` bool (token inside a grounded phrase) and mask
    `(B, T)` bool: the real text tokens of the texts whose phrases are a selection of their words (the
    batch's `phrases_select_words`; all False for RefCOCO-style texts, where every word is a phrase word and
    the labels say nothing about which words to select)."""

    out: GroundingOutput
    image_index: torch.Tensor
    selector_logits: torch.Tensor | None = None
    selector_labels: torch.Tensor | None = None
    selector_mask: torch.Tensor | None = None

    def selector_counts(self, selected: torch.Tensor) -> torch.Tensor:
        """`(4,)` token counts (tp, fp, fn, tokens) of a `(B, T)` selection against the labels."""
        return token_counts(selected, self.selector_labels, self.selector_mask)


class GroundingModule(pl.LightningModule):
    """Train and validate the grounding model of a config (a plain dict, stored in checkpoints)."""

    def __init__(self, config: dict[str, Any], val_splits: list[str] | None = None):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = OmegaConf.create(config)
        self.adapter = build_adapter(self.cfg)
        self.model = build_grounding_model(self.cfg, self.adapter)
        # None without `model.selector`: then no `selector.*` weights, so older checkpoints still fit.
        self.selector = build_text_component(self.cfg, self.adapter, "selector")
        self.val_splits = list(self.cfg.data.val_splits if val_splits is None else val_splits)
        # Scored as tools/test.py scores them: average recall on PNG, cIoU / gIoU on the rest.
        self.val_metrics = torch.nn.ModuleList([main_metric(split) for split in self.val_splits])
        self.val_coarse_metrics = torch.nn.ModuleList([main_metric(split) for split in self.val_splits])
        self.val_selector_metrics = torch.nn.ModuleList([TokenF1() for _ in self.val_splits])
        self._nonfinite_in_a_row = self._nonfinite_total = 0
        # Frozen weights are absent from checkpoints; `on_load_checkpoint` checks the rest explicitly.
        self.strict_loading = False
        # DDP must neither broadcast nor all-reduce the frozen LMM (7B) and SAM encoder at start-up.
        self._ddp_params_and_buffers_to_ignore = [
            name
            for name in (*dict(self.named_parameters()), *dict(self.named_buffers()))
            if name.startswith(FROZEN_PREFIXES)
        ]

    def lmm_identity(self) -> dict[str, Any]:
        """The LMM architecture a checkpoint must have been trained on to be loaded into this model.

        The weights' name or folder is not part of it: the same LMM may move or be given as a hub id once
        and a local folder the next time.
        """
        text = self.adapter.text_config()
        return {
            "adapter": type(self.adapter).__name__,
            "num_layers": int(text.num_hidden_layers),
            "num_heads": int(text.num_attention_heads),
            "attention_channels": self.adapter.channels,
            "hidden_size": int(text.hidden_size),
        }

    def forward(self, batch: dict) -> tuple[GroundingOutput, torch.Tensor]:
        """Ground every phrase of a collated batch (see `flmm.data.collate`).

        Returns the model's output and `(P,)` the image index of each phrase.
        """
        grounded = self.ground(batch)
        return grounded.out, grounded.image_index

    def ground(self, batch: dict) -> Grounded:
        """`forward`, plus the keyword selector's logits and labels on the text tokens when there is one.

        With a selector the batch must carry `phrases_select_words (B,)` bool (`flmm.data.collate`): only
        the tokens of those texts are scored by the selector's loss and F1.
        """
        if self.selector is not None and "phrases_select_words" not in batch:
            raise FlmmError(
                "a batch for a model with a keyword selector (model.selector) needs 'phrases_select_words', "
                "(B,) bool: whether each text's phrases are a selection of its words (see flmm.data.datasets)"
            )
        encoded = self.adapter.encode_text(batch["text"], batch["phrase_spans"], batch["lmm_image"])
        lmm_out = self.adapter(
            encoded.input_ids,
            encoded.attention_mask,
            encoded.phrase_ids,
            batch["lmm_image"],
            text_mask=None if self.selector is None else encoded.text_mask,
        )
        image_index = lmm_out.phrase_batch_index.to(self.device)
        out = self.model(
            lmm_out.attention.to(self.device),
            image_index,
            batch["pad_meta"],
            batch["images"],
            lmm_out.hidden_states.to(self.device),
            lmm_out.hidden_mask.to(self.device),
        )
        if self.selector is None:
            return Grounded(out, image_index)
        labelled = batch["phrases_select_words"].to(self.device)
        return Grounded(
            out,
            image_index,
            self.selector(lmm_out.text_hidden.to(self.device)),
            lmm_out.text_phrase_ids.to(self.device) >= 0,
            lmm_out.text_token_mask.to(self.device) & labelled[:, None],
        )

    @staticmethod
    def phrase_targets(batch: dict) -> list[torch.Tensor]:
        """Ground-truth masks `(H_i, W_i)` of every phrase, in the model's (sample, phrase) order."""
        return [mask for masks in batch["masks"] for mask in masks]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        grounded = self.ground(batch)
        losses = self.image_averaged_losses(grounded.out, grounded.image_index, self.phrase_targets(batch))
        if self.selector is not None:
            # One text per image, so the per-text average is also a per-image one (same under DDP); texts
            # without word-selection labels add 0 (a batch of RefCOCO texts only has a selector loss of 0).
            losses["loss_selector"] = self.selector.loss(
                grounded.selector_logits, grounded.selector_labels, grounded.selector_mask
            )
            losses["loss"] = losses["loss"] + self.selector.loss_weight * losses["loss_selector"]
        for name, value in losses.items():
            self.log(
                f"train/{name}",
                value,
                prog_bar=name == "loss",
                batch_size=len(batch["images"]),
                sync_dist=True,
            )
        return losses["loss"]

    @staticmethod
    def image_averaged_losses(
        out: GroundingOutput, image_index: torch.Tensor, targets: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The loss terms of each image (averaged over its phrases), averaged over the images.

        Every image weighs the same whatever its phrase count, so a global batch split over DDP ranks
        gives the same gradient as the whole batch in one process.
        """
        per_image = []
        for b in image_index.unique(sorted=True).tolist():
            rows = (image_index == b).nonzero().flatten().tolist()
            refined = None if out.refined is None else [out.refined[r] for r in rows]
            per_image.append(
                grounding_losses([out.coarse[r] for r in rows], refined, [targets[r] for r in rows])
            )
        return {name: torch.stack([terms[name] for terms in per_image]).mean() for name in per_image[0]}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> GroundingOutput | None:
        if not has_samples(batch):  # every sample was broken (logged; counted by `flmm.engine.skips`)
            return None
        grounded = self.ground(batch)
        out, image_index = grounded.out, grounded.image_index
        if self.selector is not None:
            selected = self.selector.select(grounded.selector_logits)
            self.val_selector_metrics[dataloader_idx].update(grounded.selector_counts(selected))
        queries = [q for qs in batch["queries"] for q in qs]
        targets = without_ignored([t.bool() for t in self.phrase_targets(batch)], queries)
        coarse = crop_padding(out.coarse_square, image_index, batch["pad_meta"], resize_to_original=True)
        for metric, logits in ((self.val_metrics, out.predictions), (self.val_coarse_metrics, coarse)):
            masks = without_ignored([binarize(p) for p in logits], queries)
            update_main_metric(metric[dataloader_idx], masks, targets, queries)
        return out

    def on_validation_epoch_end(self) -> None:
        # `compute()` already sums the metric states of all ranks, so every rank logs the same values; the
        # mean over ranks of `sync_dist=True` leaves them unchanged (and Lightning does not warn under DDP).
        metrics = zip(self.val_splits, self.val_metrics, self.val_coarse_metrics, self.val_selector_metrics)
        for split, metric, coarse, selector in metrics:
            results = metric.compute()
            headline = headline_key(split)
            for key in validation_keys(split):
                self.log(f"val/{split}/{key}", float(results[key]), sync_dist=True)
            self.log(f"val/{split}/coarse_{headline}", float(coarse.compute()[headline]), sync_dist=True)
            # F1 only where tokens carry word-selection labels (PNG narratives); a RES split has none. The
            # counts are reduced over ranks, so every rank takes the same branch.
            selection = selector.compute() if self.selector is not None else None
            if selection is not None and selection["selector_tokens"]:
                self.log(
                    f"val/{split}/selector_token_F1", float(selection["selector_token_F1"]), sync_dist=True
                )
            metric.reset()
            coarse.reset()
            selector.reset()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        train = self.cfg.train
        # Decay on every trainable tensor, norms and biases included: the reference's AdamW (DESIGN.md) sets
        # no per-parameter groups.
        optimizer = torch.optim.AdamW(
            self.trainable_parameters(), lr=train.lr, weight_decay=train.weight_decay
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(train.warmup_ratio * total))
        scheduler = LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """Set the LR of the schedule at the step the run starts from. A resumed optimizer holds the LR the
        stored run had; after a resume with another total (more epochs) the schedule is recomputed, and its
        value at the resumed step applies from the first step on (same config: the same value)."""
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            factors = [factor(scheduler.last_epoch) for factor in scheduler.lr_lambdas]
            for group, base_lr, f in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, factors):
                group["lr"] = base_lr * f

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip a step whose gradients are not finite (a NaN / inf loss, an overflow): the gradients are
        dropped, so AdamW leaves weights and moments untouched (the LR schedule still advances). Counted in
        `train/nonfinite_steps`; `train.max_nonfinite_in_a_row` in a row stop the run with a FlmmError.
        Under DDP the gradients are already all-reduced here, so every rank decides the same."""
        grads = [p.grad for p in self.trainable_parameters() if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        if finite:
            self._nonfinite_in_a_row = 0
            return
        for parameter in self.trainable_parameters():
            parameter.grad = None
        self._nonfinite_in_a_row += 1
        self._nonfinite_total += 1
        self.log("train/nonfinite_steps", float(self._nonfinite_total), rank_zero_only=True)
        limit = int(self.cfg.train.max_nonfinite_in_a_row)
        if self._nonfinite_in_a_row >= limit:
            raise FlmmError(
                f"stopping: {self._nonfinite_in_a_row} training steps in a row had non-finite gradients "
                f"(the last at step {self.global_step}; {self._nonfinite_total} in all). The weights were "
                "not updated by them; lower train.lr, use train.precision=32, or check the data."
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        bad = [n for n, p in self.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if bad:
            raise FlmmError(f"refusing to save a checkpoint with non-finite weights ({bad[0]}, ...)")
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(FROZEN_PREFIXES)
        }
        checkpoint["flmm_identity"] = self.lmm_identity()
        checkpoint["flmm_lmm_source"] = self.adapter.source
        checkpoint["flmm_nonfinite_steps"] = [self._nonfinite_total, self._nonfinite_in_a_row]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint_fits(self, checkpoint)
        # A resumed run goes on counting its non-finite steps (checkpoints from before: from 0).
        self._nonfinite_total, self._nonfinite_in_a_row = checkpoint.get("flmm_nonfinite_steps", [0, 0])


def check_checkpoint_fits(module: GroundingModule, checkpoint: dict) -> None:
    """ConfigError unless `checkpoint` was trained for this module's LMM and holds exactly its trainable
    weights (no key missing, none unexpected, no shape different)."""
    mine, theirs = module.lmm_identity(), checkpoint.get("flmm_identity")
    if theirs is None:
        raise ConfigError("the checkpoint was not written by flmm's trainer (no flmm_identity)")
    if theirs != mine:
        diffs = ", ".join(
            f"{k}: checkpoint {theirs.get(k)!r} vs this run {mine[k]!r}"
            for k in mine
            if theirs.get(k) != mine[k]
        )
        raise ConfigError(f"the checkpoint belongs to another LMM or head ({diffs})")
    check_same_weights(module.adapter.source, checkpoint.get("flmm_lmm_source"))
    expected = {k: v for k, v in module.state_dict().items() if not k.startswith(FROZEN_PREFIXES)}
    stored = checkpoint["state_dict"]
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(stored) if expected[k].shape != stored[k].shape)
    if missing or unexpected or reshaped:
        raise ConfigError(
            f"the checkpoint does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"different shapes {reshaped[:5]}"
        )


def check_same_weights(mine: dict | None, theirs: dict | None) -> None:
    """ConfigError when the LMM weights loaded now (`weights_source`) are not those a checkpoint was trained
    with: another hub revision, or another fingerprint. Nothing to compare for a model built in memory."""
    if mine is None or theirs is None:
        return
    if theirs["revision"] and mine["revision"] and theirs["revision"] != mine["revision"]:
        raise ConfigError(
            f"the checkpoint was trained on {theirs['model']} at hub revision {theirs['revision']}, but "
            f"this run loaded revision {mine['revision']}; set model.lmm.revision={theirs['revision']} to "
            "load the weights it was trained with"
        )
    if theirs["fingerprint"] != mine["fingerprint"]:
        raise ConfigError(
            f"the LMM weights loaded from {mine['model']} are not those the checkpoint was trained with "
            f"({theirs['model']}; fingerprint {theirs['fingerprint'][:19]}... vs "
            f"{mine['fingerprint'][:19]}...); point model.lmm.model at the weights it was trained with"
        )


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file written by flmm's trainer; FlmmError (not a torch traceback) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FlmmError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise FlmmError(f"{path}: not a readable checkpoint: the file is empty (0 bytes)")
    with open(path, "rb") as handle:
        zipped = handle.read(4) == b"PK\x03\x04"  # torch.save's format is a zip archive
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's messages run to many lines; the weights-only one is advice around the unpickler's cause.
        text = str(exc)
        marker = "WeightsUnpickler error:"
        if marker in text:
            after = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
            text = f"refused by the weights-only unpickler: {after[0] if after else 'no cause given'}"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        cause = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
        if not zipped:
            what = "not a PyTorch checkpoint written by tools/train.py"
        elif "central directory" in str(exc) or isinstance(exc, (OSError, EOFError)):
            what = (
                f"a truncated or damaged PyTorch file ({size} bytes; a copy or a write that did not finish?)"
            )
        else:
            what = "a PyTorch file, but not a checkpoint written by tools/train.py"
        raise FlmmError(f"{path}: not a readable checkpoint: {what} ({cause})") from None
    if not isinstance(checkpoint, dict) or "flmm_identity" not in checkpoint:
        raise FlmmError(f"{path}: not a checkpoint written by flmm's trainer (no flmm_identity)")
    return checkpoint
