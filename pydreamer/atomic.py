"""Atomic file writes: a reader sees the whole file or none of it."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def atomic_write(path: str | os.PathLike, tmp_name: str | None = None) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary file in the same folder (default name
    `.<name>.<uuid>.tmp`, which no listing of this project takes for a real file), flushed, fsynced
    and renamed onto `path` when the block ends. On an error it is removed, and an OSError (e.g. a
    full disk) names `path` rather than the temporary file."""
    path = Path(path)
    tmp = path.with_name(tmp_name or f'.{path.name}.{uuid.uuid4().hex}.tmp')
    try:
        with open(tmp, 'xb') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            e.filename = str(path)
        raise
