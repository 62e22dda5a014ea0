"""Output files that are never half-written and never shared by accident.

Every output (text, JSON, figures, checkpoints, models, whole SavedModel directories) is written
under a hidden temporary name beside its target and renamed into place, which is atomic on POSIX
filesystems: a reader, a resumed run or a polling model server sees the old version or the new
one, never part of one. `DirLock` holds an advisory lock on a directory for a process's life, so
two runs never write the same `--model_dir`; the OS drops it when the process dies (even by
kill -9), so no stale lock is ever left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

TMP_PREFIX = ".tmp-"
LOCK_FILE = ".lock"


def _temp_path(path: pathlib.Path) -> pathlib.Path:
    # The full name is kept at the end: writers that check suffixes (".keras", ".weights.h5")
    # accept it, and the leading dot hides it from globs like "ckpt-*".
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary path to write; on success it replaces `path`, on error it is removed.

    with files.replacing(model_dir / "model.keras") as tmp:
        model.save(tmp)
    """
    path = pathlib.Path(path)
    tmp = _temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes `text` to `path` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return pathlib.Path(path)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 1) -> pathlib.Path:
    """Writes `value` as JSON to `path` atomically."""
    return write_text(path, json.dumps(value, indent=indent) + "\n")


def save_figure(figure, path: str | os.PathLike, dpi: int = 110) -> pathlib.Path:
    """Saves a matplotlib figure atomically and closes it."""
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    try:
        with replacing(path) as tmp:
            figure.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)
    return path


@contextlib.contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields an empty hidden directory beside `target`, renamed to `target` on success.

    Raises FileExistsError (and removes the staging directory) when `target` appeared meanwhile:
    a finished directory is never overwritten. The directory is created with the umask's mode,
    not mkdtemp's 0700, so that a server running as another user can read it.
    """
    target = pathlib.Path(target)
    tmp = _temp_path(target)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if target.exists():
            raise FileExistsError(f"{target} appeared while it was being written; it was left untouched.")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(directory: str | os.PathLike) -> list[pathlib.Path]:
    """Removes temporary files and folders that killed writers left in `directory`.

    Only those of processes that no longer run on this host (the pid is part of the name); call
    it while holding the directory's lock so that no live writer of another host is affected.
    """
    removed = []
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.glob(f"{TMP_PREFIX}*"):
        pid = path.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_writable(path: str | os.PathLike, flag: str) -> pathlib.Path:
    """Creates directory `path` if needed and proves it writable; raises `NotWritable` naming `flag`."""
    path = pathlib.Path(path).expanduser()
    try:
        if path.exists() and not path.is_dir():
            raise NotWritable(f"{flag}={path} is a file, not a directory: pass a directory.")
        path.mkdir(parents=True, exist_ok=True)
        probe = _temp_path(path / "write-test")
        try:
            # A megabyte, synced: an empty file is created even on a full disk.
            with probe.open("wb") as f:
                f.write(bytes(PROBE_BYTES))
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except NotWritable:
        raise  # already the one line (a file where a directory goes)
    except OSError as err:
        raise NotWritable(
            f"{flag}={path} is not writable ({err.strerror or err}): choose a directory you can write to."
        ) from None
    return path


PROBE_BYTES = 1 << 20


def disk_full(err: BaseException) -> bool:
    """Whether `err` (OSError, h5py's, TensorFlow's ResourceExhaustedError...) says the disk is full."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return any("No space left on device" in str(e) for e in (err, err.__cause__, err.__context__) if e)


def no_space(where: str) -> str:
    """The one line for a full disk under `where`: what to do, and that nothing was lost."""
    return (
        f"no space left on the device of {where}: free some space and run the same command again "
        "(what was written before is kept; nothing half-written is left)."
    )


def check_room(
    path: str | os.PathLike, need: int, flag: str, what: str, detail: str = "", fix: str = ""
) -> None:
    """Raises `NoRoom` when the device of `path` (an existing directory) has fewer than `need`
    bytes free: one line with both numbers, `what` needs them (`detail`: of what), and the fix."""
    free = shutil.disk_usage(path).free
    if free < need:
        raise NoRoom(
            f"{flag}={path} has {free / 1e6:.1f} MB free on its device; {what} needs at least "
            f"{need / 1e6:.1f} MB{detail}: free some space or choose another {flag}.{fix}"
        )


def refuse_foreign(directory: str | os.PathLike, flag: str, ours: Callable[[str], bool]) -> None:
    """Raises `ForeignFiles` when `directory` holds names `ours` does not claim, before anything is
    written there: nothing of the user's is overwritten or deleted. Hidden names (locks,
    temporaries, the OS's own) are never written by name, so never in the way."""
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    found = [n for n in names if not n.startswith(".") and not ours(n)]
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ForeignFiles(
            f"{flag}={directory} holds files this project did not write ({shown}): they are left "
            "untouched; use a new or empty directory, or move them away."
        )


class ForeignFiles(ValueError):
    """A directory a command would write holds files the project did not write there."""


class NotWritable(OSError):
    """An output location that cannot be created or written."""


class NoRoom(OSError):
    """An output location whose device has too little room for what a command will write there."""


class Locked(RuntimeError):
    """Another live process holds the lock."""


class DirLock:
    """An exclusive advisory lock on a directory (`flock` on `<dir>/.lock`), held until `release`.

    The lock file names its holder (pid, host, time, purpose). The OS releases the lock when the
    holding process ends in any way, so a lock is never stale. Locks on network filesystems are
    as reliable as the filesystem's own `flock` support.
    """

    def __init__(self, directory: str | os.PathLike, purpose: str = "run"):
        self.directory = pathlib.Path(directory)
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise Locked(
                f"{self.directory} is in use by {holder}: wait for it to finish or stop it, or use another "
                "directory."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.write(fd, json.dumps({**info, "purpose": self.purpose}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096) or b"{}")
        return f"{info.get('purpose', 'a run')} pid {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"
