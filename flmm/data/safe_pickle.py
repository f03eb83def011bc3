"""Read downloaded annotation files (refs pickles, JSON) as plain data, with errors that name the file.

The refs(*.p) files of RefCOCO/+/g are pickles downloaded from the internet; `pickle.load` would execute
whatever callable a crafted file names. Plain containers and scalars are built by pickle opcodes alone, so an
unpickler that refuses every global lookup can read every legitimate refs file and nothing else. JSON files
are read with the position of the first syntax error, which is where a truncated download ends.
"""

from __future__ import annotations

import io
import json
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
        # Python 2 `str` objects come back as bytes and are decoded by `_decode_py2_text`: "latin1" here
        # would turn the UTF-8 bytes of a non-ASCII expression into mojibake.
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"{self._source}: refuses to load: the pickle asks for the Python object '{module}.{name}', "
            "but a refs file holds only lists, dicts, strings and numbers. The file may be corrupt or "
            "crafted to run code; download it again from the official refer release."
        )


def _decode_py2_text(obj: object) -> object:
    """Replace the bytes in plain containers by text: UTF-8, or latin-1 where the bytes are not UTF-8."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin-1")
    if isinstance(obj, dict):
        return type(obj)((_decode_py2_text(k), _decode_py2_text(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return type(obj)(_decode_py2_text(v) for v in obj)
    return obj


def load_plain_pickle(path: str | Path) -> object:
    """Unpickle `path` allowing only plain containers and scalars; raise DataError otherwise.

    Byte strings (Python 2 `str`) are returned as text, so a refs file reads the same whichever Python
    wrote it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open("rb") as f:
        try:
            return _decode_py2_text(_PlainDataUnpickler(f, str(path)).load())
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def load_plain_json(path: str | Path, what: str) -> object:
    """Parse the JSON file `path` (described as `what` in errors); raise DataError naming the file and the
    position of a syntax error, or the byte that is not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the {what})")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM is valid UTF-8 that json refuses
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text at byte {exc.start}, so not the {what}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        ends = " (the file ends there: truncated?)" if exc.pos >= len(text.rstrip()) else ""
        raise DataError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(char {exc.pos}){ends}; expected the {what}"
        ) from exc
