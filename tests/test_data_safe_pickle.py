"""refs pickles are read by an unpickler that builds plain data only."""

from __future__ import annotations

import pickle

import pytest

from flmm.data.safe_pickle import load_plain_pickle
from flmm.errors import DataError


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_plain_refs_load_unchanged(tmp_path):
    refs = [
        {"ref_id": 0, "sentences": [{"sent": "café", "tokens": ["café"]}], "bbox": (1.0, 2.5), "ids": {3}}
    ]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    assert load_plain_pickle(path) == refs


def test_pickle_that_calls_a_function_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "evil": _RunsCode(marker)}]))
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: refuses to load.*(builtins|io)\.open"):
        load_plain_pickle(path)
    assert not marker.exists()


def test_pickle_naming_os_system_is_refused(tmp_path):
    path = tmp_path / "refs(umd).p"
    path.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(DataError, match=r"os\.system"):
        load_plain_pickle(path)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": i} for i in range(100)])[:50])
    with pytest.raises(DataError, match="not a readable pickle"):
        load_plain_pickle(path)
