"""Checkpoint writes: an interrupted write keeps the previous checkpoint whole and leaves no partial file."""

from __future__ import annotations

import pytest
import torch

from flmm.engine.checkpoint_io import SameFolderAtomicIO


def test_a_write_replaces_the_checkpoint_whole(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = SameFolderAtomicIO()
    io.save_checkpoint({"step": 1}, path)
    io.save_checkpoint({"step": 2}, path)
    assert torch.load(path)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("written", [0, 1, 100])
def test_a_write_interrupted_at_any_byte_keeps_the_previous_checkpoint(tmp_path, monkeypatch, written):
    path = tmp_path / "last.ckpt"
    io = SameFolderAtomicIO()
    io.save_checkpoint({"step": 1, "weights": torch.ones(1000)}, path)

    def killed(obj, handle):  # the process dies after `written` bytes of the new file
        handle.write(b"x" * written)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
