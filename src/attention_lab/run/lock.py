"""One writer at a time in a run directory: a lock that the kernel holds for the process.

``train.py`` takes its run directory's lock before it writes anything there (its attempt
record's claim on the run included) and holds it until it exits; ``evaluate`` takes the lock of
the folder it writes into (the run directory itself when that folder lies inside it). A second
command aimed at a folder whose lock is held is refused with one line naming the process that
holds it, instead of interleaving its writes with the first one's.

The lock is ``flock`` on the file ``.lock``, which also names the holder (pid, host, command,
start time) for that message. The kernel releases it when the process ends in any way
(SIGKILL, an OOM kill, a crash), so a lock is never stale; on a network file system ``flock``
is as good as the file system's locking. Within one process the lock is re-entrant (``train``
called by ``train.py`` takes the lock ``train.py`` holds already). Only the process of global
rank 0 takes it: the other processes of a DDP run write nothing of their own there.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only

from attention_lab.errors import RunInUseError

LOCK_FILE = ".lock"
_held: set[Path] = set()  # the folders whose lock this process holds


def lock_holder(folder: Path) -> dict[str, Any]:
    """What the lock file of ``folder`` says of its holder (empty if it cannot be read)."""
    try:
        record = json.loads((folder / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def in_use_message(folder: Path, holder: dict[str, Any], setting: str) -> str:
    """One line: who holds ``folder``, and what to do."""
    who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
    return (
        f"{folder} is in use by {who} (`{holder.get('command', '?')}`, since "
        f"{holder.get('since', '?')}): wait for it to end, or choose another {setting}"
    )


def _take(folder: Path, setting: str) -> int:
    """Open and lock ``folder/.lock``, write this process's record in it; its descriptor."""
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunInUseError(in_use_message(folder, lock_holder(folder), setting)) from None
        try:  # the file we locked must still be the one at ``path`` (its holder unlinks it)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(["python", *sys.argv]),
        "since": datetime.now().isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(record) + "\n").encode())
    return fd


@contextmanager
def run_lock(folder: Path, setting: str) -> Iterator[None]:
    """Hold ``folder``'s lock while the block runs (creating the folder); ``RunInUseError``
    naming ``setting`` when another process holds it. A no-op on ranks other than 0, and for a
    folder that cannot be created or written (the caller reports that)."""
    folder = Path(folder).resolve()
    if rank_zero_only.rank != 0 or folder in _held:
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _take(folder, setting)
    except RunInUseError:
        raise
    except OSError:  # a folder that cannot be written: nothing to guard, and the command's
        yield  # own check of the folder reports it in one line (run.config)
        return
    _held.add(folder)
    try:
        yield
    finally:
        _held.discard(folder)
        (folder / LOCK_FILE).unlink(missing_ok=True)  # while still holding it: see _take
        os.close(fd)
