"""Counted, logged skipping of broken records, with a cap on the fraction a run may lose.

A broken image or record is reported once, by file and record, and skipped; when more than
`max_fraction` of a dataset turns out broken the run stops with one error that lists the first
problems, because a run that silently trains on half its data is lost work too.
"""

from __future__ import annotations

import logging

from flmm.errors import DataError

log = logging.getLogger("flmm.data")


class SkipBudget:
    """Count skipped records of one dataset and raise once their share exceeds `max_fraction`."""

    def __init__(self, name: str, total: int, max_fraction: float):
        if not 0.0 <= max_fraction <= 1.0:
            raise DataError(f"data.max_skip_fraction must be in [0, 1], got {max_fraction}")
        self.name = name
        self.total = max(total, 1)
        self.max_fraction = max_fraction
        self.reasons: list[str] = []
        self._keys: set[object] = set()

    @property
    def count(self) -> int:
        return len(self.reasons)

    def skip(self, reason: str, key: object = None, enforce: bool = True) -> None:
        """Record one skipped record (once per `key`); then `check()` unless not `enforce`."""
        if key is not None:
            if key in self._keys:
                return
            self._keys.add(key)
        self.reasons.append(reason)
        log.warning("%s: skipped (%d so far): %s", self.name, self.count, reason)
        if enforce:
            self.check()

    def state_dict(self) -> dict:
        """What was counted (for a checkpoint): the reasons, and the keys counted once each."""
        return {"reasons": list(self.reasons), "keys": list(self._keys)}

    def load_state_dict(self, state: dict) -> None:
        """Go on counting from `state` (a resumed run's): a record it counted is not counted again."""
        self.reasons = list(state["reasons"])
        self._keys = set(state["keys"])

    def check(self) -> None:
        """Raise DataError when the skipped share exceeds the cap."""
        if self.count / self.total > self.max_fraction:
            shown = "\n  ".join(self.reasons[:5])
            raise DataError(
                f"{self.name}: {self.count} of {self.total} records are broken, more than "
                f"data.max_skip_fraction={self.max_fraction}. First problems:\n  {shown}"
            )
