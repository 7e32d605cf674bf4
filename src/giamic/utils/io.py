"""Atomic file writes and output-folder checks.

Every artefact the toolkit produces (caches, checkpoints, reports, CSVs) is written to a temporary
file in the destination folder, flushed to disk and then renamed over the destination. A kill at any
moment leaves either the old file or the new one, never a truncated one; so does an error such as
a full disk, which surfaces as an ``OSError`` naming the destination (the command line turns it into
one line with :func:`giamic.errors.from_os_error`).

Commands check their output folder with :func:`check_output_dir` before doing any work, so that a
file in the way, a missing parent or a read-only folder is reported at once, naming the path.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from giamic.errors import OutputError, from_os_error


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched. An ``OSError``
    of the write itself (no space left, quota, I/O error) or of creating the temporary file
    (permission denied, read-only file system) is re-raised naming ``path``, never the temporary
    name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        f, tmp = _open_temp(path.parent, path.name, mode, encoding)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and (e.filename is None or e.filename == tmp):
            raise _naming(e, path) from e
        raise


def _open_temp(directory: Path, name: str, mode: str, encoding: str | None) -> tuple[IO, str]:
    """Create ``directory/.<name>.<random>.tmp`` and open it for writing: the one place where the
    toolkit creates an output file. Returns the open file and its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        return os.fdopen(fd, mode, encoding=encoding), tmp
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise


def _naming(e: OSError, path: Path) -> OSError:
    """The same error (same errno, hence the same ``OSError`` subclass) with ``path`` as its file."""
    if e.errno is None:
        return e
    return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check, before any work, that ``path`` can be the output folder of a command.

    Nothing is left behind: the folder (or, if it does not exist yet, its nearest existing parent)
    must be a directory in which a file can be created. Raises :class:`giamic.errors.OutputError`
    naming ``path`` when a file stands where the folder or one of its parents should be, when the
    folder cannot be created (a missing parent such as ``/proc/x``), or when it is read-only.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError("exists and is not a directory; give a folder (new or existing) for the output", path)
    base = path
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"cannot create this folder: {base} is a file, not a directory", path)
    try:
        f, tmp = _open_temp(base, "giamic-write-test", "wb", None)
    except OSError as e:
        what = "cannot write in this folder" if base == path else f"cannot create this folder in {base}"
        raise OutputError(f"{what}: {from_os_error(e).message}", path) from e
    f.close()
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` through a temporary file and a rename."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_bytes_atomic(path, save(tensors, metadata=metadata))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
