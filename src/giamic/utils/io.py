"""Atomic file writes and output-folder checks.

Every artefact the toolkit produces (caches, checkpoints, reports, CSVs) is written to a temporary
file in the destination folder, flushed to disk and then renamed over the destination. A kill at any
moment leaves either the old file or the new one, never a truncated one; so does an error such as
a full disk, which surfaces as an ``OSError`` naming the destination (the command line turns it into
one line with :func:`giamic.errors.from_os_error`).

Commands check their output folder with :func:`check_output_dir` before doing any work, so that a
file in the way, a missing parent or a read-only folder is reported at once, naming the path.

Files are created with the process umask (mode ``0666 & ~umask``, 0644 under the usual umask 022),
as ``open`` would create them, so a shared model or cache is readable by whoever may read its folder.

A command that writes into a folder holds :func:`output_lock` on it for the whole run: a second
giamic process on the same folder stops at once with an error naming the holder's PID. The lock is
an ``fcntl.flock`` on ``.giamic.lock`` in the folder, released by the kernel when its process ends,
so a killed run never leaves a stale lock. Taking the lock also removes the temporary files that a
killed run left (:func:`remove_stale_temps`): only names of the writer's own pattern
(``.<name>.<8 characters>.tmp``), and only when no other process can be writing them.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator

from giamic.errors import OutputError, from_os_error

log = logging.getLogger(__name__)

LOCK_FILE = ".giamic.lock"
#: the names :func:`_open_temp` gives its temporary files (``tempfile`` adds 8 characters)
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_UMASK_LOCK = threading.Lock()


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
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
        return os.fdopen(fd, mode, encoding=encoding), tmp
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process umask: from ``/proc/self/status`` where Linux shows it, else by setting it and
    setting it back at once (under a lock)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


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
    """``safetensors.torch.save_file`` through a temporary file and a rename; the same tensors and
    metadata give the same bytes (:func:`safetensors_bytes`)."""
    write_bytes_atomic(path, safetensors_bytes(tensors, metadata))


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors serialisation of ``tensors`` with the metadata keys in sorted order.

    The ``safetensors`` library writes the metadata in the order of a hash map seeded per process,
    so two identical runs would write different files. The header (an 8-byte little-endian length,
    then JSON padded with spaces to a multiple of 8 bytes) is rewritten with sorted metadata; the
    tensor entries keep their order and the data region is unchanged.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


# -- one process per output folder -------------------------------------------------------------------
def lock_holders(lock_path: str | os.PathLike) -> list[int]:
    """PIDs holding an ``flock`` on ``lock_path``, read from ``/proc/locks`` (empty where there is none)."""
    try:
        ino = os.stat(lock_path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        f = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF" (a blocked waiter has "->" after the number)
        if "->" in f:
            continue
        if len(f) >= 6 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(ino):
            with contextlib.suppress(ValueError):
                pids.append(int(f[4]))
    return sorted(set(pids) - {os.getpid()})


def _flock(fd: int, how: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            log.warning("this file system does not support file locks: nothing stops a second giamic process "
                        "from writing into the same folder")
            return True
        raise


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise _naming(e, path) from e


def _busy(directory: Path, lock_path: Path, what: str) -> OutputError:
    pids = lock_holders(lock_path)
    who = f"another giamic process (PID {', '.join(map(str, pids))})" if pids else "another giamic process"
    return OutputError(f"{what} is in use by {who}; wait for it to finish, or give another folder", directory)


@contextlib.contextmanager
def output_lock(directory: str | os.PathLike, part: str | None = None, what: str = "this folder") -> Iterator[Path]:
    """Hold the folder ``directory`` for this process; remove the stale temporary files in it.

    Without ``part`` the lock is exclusive: a second process gets :class:`OutputError` naming the
    folder and the holder's PID. With ``part`` (a shard of a feature store: ``"shard-0-of-4"``),
    processes working on different parts share the folder and each part is exclusive. Temporary
    files are removed only when no other process holds the folder. The lock is released when the
    block ends or the process dies.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    main = directory / LOCK_FILE
    fds: list[int] = []
    try:
        fd = _open_lock(main)
        fds.append(fd)
        import fcntl

        if part is None:
            if not _flock(fd, fcntl.LOCK_EX):
                raise _busy(directory, main, what)
            remove_stale_temps(directory)
        else:
            if not _flock(fd, fcntl.LOCK_SH):
                raise _busy(directory, main, what)
            pfile = directory / f".giamic.{part}.lock"
            pfd = _open_lock(pfile)
            fds.append(pfd)
            if not _flock(pfd, fcntl.LOCK_EX):
                raise _busy(directory, pfile, f"{what} ({part})")
            if _flock(fd, fcntl.LOCK_EX):  # alone in the folder: nobody else can be writing
                remove_stale_temps(directory)
            # Back to shared; converting may drop the lock for a moment, so take it again if so.
            if not _flock(fd, fcntl.LOCK_SH):
                raise _busy(directory, main, what)
        yield directory
    finally:
        for fd in reversed(fds):
            os.close(fd)  # closing the last descriptor releases the flock


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the atomic writer's temporary files (``.<name>.<8 characters>.tmp``) under
    ``directory``, left by a run that was killed while writing. Subfolders with their own lock
    file (a feature store inside a dataset) belong to their own lock holder and are skipped.
    Call it only while holding ``directory``'s lock. Returns the removed paths."""
    directory = Path(directory)
    removed: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not (Path(root) / d / LOCK_FILE).exists())
        for name in sorted(files):
            if TEMP_PATTERN.match(name):
                p = Path(root) / name
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", directory, len(removed))
    return removed


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
