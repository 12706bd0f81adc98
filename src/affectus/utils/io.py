"""Safe file plumbing: atomic writes, directory locks, and reads that fail in one line.

* Results and checkpoints appear whole or not at all (temp file + rename), with the user's umask
  (a lab group can read shared runs), and a full disk or a bad path is one `AffectusError` naming
  the file, never a traceback or a half-written file.
* `lock_dir(path)` is an `fcntl.flock` on a lock file inside the directory: two processes never
  write one run / experiment / sweep directory at once, and the kernel drops the lock when its holder
  dies, so a crashed or killed process never leaves a directory stuck.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from affectus.errors import AffectusError

LOCK_NAME = ".affectus.lock"


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # elsewhere: set and restore (not thread-safe, but only a file mode depends on it)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_dir(path: str | os.PathLike, what: str = "directory") -> Path:
    """mkdir -p with one-line errors: the path (or a parent) is a file, or cannot be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AffectusError(f"{path}: is a file, expected a {what}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise AffectusError(f"{path}: cannot create the {what}: a parent is a file") from None
    except OSError as err:
        raise AffectusError(f"{path}: cannot create the {what} ({_reason(err)})") from None
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success it is renamed over `path`.

    Any OSError while writing (ENOSPC, EIO, a read-only disk) or renaming (`path` is a directory)
    becomes one AffectusError naming `path`; the temp file is always removed.
    """
    path = Path(path)
    if path.is_dir():
        raise AffectusError(f"{path}: is a directory, expected a file path")
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp creates 0600; a normal file is 0666 minus the umask, as `open` would make it
        os.fchmod(fd, 0o666 & ~current_umask())
        os.close(fd)
    except OSError as err:
        raise AffectusError(f"{path}: cannot write ({_reason(err)})") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as err:
        raise AffectusError(f"{path}: cannot write ({_reason(err)})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file's content; a missing, unreadable or non-UTF-8 file is one line naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AffectusError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise AffectusError(f"{what} {path}: is a directory, expected a file") from None
    except UnicodeDecodeError as err:
        raise AffectusError(f"{what} {path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise AffectusError(f"{what} {path}: cannot read ({_reason(err)})") from None


def read_json_file(path: str | os.PathLike, what: str = "file") -> Any:
    """A JSON file's value; unreadable or invalid JSON is one line naming the file."""
    try:
        return json.loads(read_text_file(path, what))
    except json.JSONDecodeError as err:
        raise AffectusError(f"{what} {path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except RecursionError:  # json's decoder recurses per nesting level: '[' * 100000 exhausts the stack
        raise AffectusError(f"{what} {path}: not valid JSON (nested too deeply)") from None


def refuse_overwrite(path: str | os.PathLike, overwrite: bool, option: str = "--out") -> None:
    """An existing file is replaced only when the user says so (`--overwrite`)."""
    path = Path(path)
    if path.is_dir():
        raise AffectusError(f"{option} {path}: is a directory, expected a file path")
    if path.exists() and not overwrite:
        raise AffectusError(f"{option} {path}: file exists; pass --overwrite to replace it")


# ------------------------------------------------------------------------------------ directory locks

# Locks this process holds: resolved dir -> [open lock file, depth]. flock conflicts between two open
# files even within one process, so a nested `lock_dir` on the same directory (the experiment runner
# locks a run directory, then `train_run` locks it again) must reuse the first one.
_HELD: dict[str, list[Any]] = {}
_HELD_GUARD = threading.Lock()


@contextmanager
def lock_dir(
    path: str | os.PathLike, what: str = "directory", shared: bool = False, wait: bool = False,
    name: str = LOCK_NAME,
) -> Iterator[Path]:
    """Hold an advisory lock on directory `path` (created if needed) for the `with` block.

    A second process that asks for the same lock gets one AffectusError "... is being written by
    another process" at once (`wait=False`) or blocks until it is free (`wait=True`, for short
    critical sections). `shared=True` lets any number of shared holders in (sweep workers of one
    study) while keeping exclusive holders out. The lock is `flock(2)` on `path/name`: the kernel
    drops it when the holding process exits or is killed, so nothing is ever left stuck. The lock
    file itself stays (removing it would race with a process that just opened it).
    Re-entrant within one process: nested calls on the same directory share the first lock (and
    its mode: a nested exclusive request inside a shared hold does not upgrade it).
    Yields the directory.
    """
    directory = make_dir(path, what)
    key = os.path.realpath(directory / name)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield directory
        finally:
            _release(key)
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the directory is unguarded there (docs/training.md)
        yield directory
        return
    try:
        f = open(directory / name, "a+b")  # noqa: SIM115 - held open beyond this block: the lock lives on it
    except OSError as err:
        raise AffectusError(f"{directory}: cannot write the {what} ({_reason(err)})") from None
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(f.fileno(), mode)
    except BlockingIOError:
        f.close()
        raise AffectusError(f"{directory}: this {what} is being written by another process; wait for it "
                            f"to finish or choose another --out") from None
    except OSError as err:  # a filesystem without locks (some network mounts)
        f.close()
        raise AffectusError(f"{directory}: cannot lock the {what} ({_reason(err)})") from None
    with _HELD_GUARD:
        _HELD[key] = [f, 1]
    try:
        yield directory
    finally:
        _release(key)


def _release(key: str) -> None:
    with _HELD_GUARD:
        held = _HELD[key]
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[key]
    held[0].close()  # closing the last descriptor releases the flock
