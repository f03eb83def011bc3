"""Load the refs(*.p) pickles of RefCOCO/+/g without letting them run code.

The refs files are pickles downloaded from the internet; `pickle.load` would execute whatever callable a
crafted file names. Plain containers and scalars are built by pickle opcodes alone, so an unpickler that
refuses every global lookup can read every legitimate refs file and nothing else.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from flmm.errors import DataError

# Globals that legitimate refs pickles (written by Python 2 and 3 refer tools) may name. They only build
# plain data, never run code.
_ALLOWED_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("collections", "OrderedDict"),
}


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"{self._source}: refuses to load: the pickle asks for the Python object '{module}.{name}', "
            "but a refs file holds only lists, dicts, strings and numbers. The file may be corrupt or "
            "crafted to run code; download it again from the official refer release."
        )


def load_plain_pickle(path: str | Path) -> object:
    """Unpickle `path` allowing only plain containers and scalars; raise DataError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open("rb") as f:
        try:
            return _PlainDataUnpickler(f, str(path)).load()
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
