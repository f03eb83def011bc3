"""The README's table of injected faults names every file of this suite, and only files that exist."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_the_readme_fault_table_and_the_suite_name_the_same_files():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Faults, preemption and bad input", 1)[1].split("\n## ", 1)[0]
    cited = set(re.findall(r"\| `(test_\w+\.py)` \|", table))
    suite = {path.name for path in Path(__file__).parent.glob("test_*.py")} - {Path(__file__).name}
    assert cited == suite
