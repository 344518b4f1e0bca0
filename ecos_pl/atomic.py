"""Files written so that a reader never sees half of one: a temporary name in the target folder, then a rename.

One place for it: results, caches, sidecars, figures' CSVs and the programs' message
files all go through `write_atomic`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[object], None], *, binary: bool = True) -> Path:
    """Write through `write(file)` to a temporary name beside `path`, then rename it into place."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; results and messages are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode()))  # bytes: no newline translation


def write_json_atomic(obj, path: str | os.PathLike, *, indent: int = 2, sort_keys: bool = False) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
