"""One writer at a time in a run directory: a lock file naming the process that writes there.

``train.py`` takes its run directory's lock for the whole run, and ``evaluate`` the folder it
writes into (inside a run directory by default). A second command aimed at a folder whose lock
a live process holds is refused with one line naming that process, instead of interleaving its
writes with the first one's. A lock left by a process that no longer exists (killed with
SIGKILL, or its machine rebooted) is stale: the next command takes it over.

The lock file (``.lock``, JSON: pid, host, command, start time) is written whole beside its
final name and linked into place, which fails if the name exists: two commands starting at once
cannot both take it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from attention_lab.errors import RunInUseError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: is there such a process (nothing is sent)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def lock_holder(folder: Path) -> dict[str, Any] | None:
    """The record of the live process (not this one) holding ``folder``'s lock; None when
    there is no lock, or a stale one. A lock taken on another host cannot be checked and
    counts as held."""
    try:
        record = json.loads((folder / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = record.get("pid") if isinstance(record, dict) else None
    if not isinstance(pid, int):
        return None
    if record.get("host") != socket.gethostname():
        return record
    return record if pid != os.getpid() and _alive(pid) else None


def in_use_message(folder: Path, holder: dict[str, Any], setting: str) -> str:
    """One line: who holds ``folder``, and what to do."""
    return (
        f"{folder} is in use by process {holder.get('pid')} on {holder.get('host')} "
        f"(`{holder.get('command')}`, since {holder.get('since')}): wait for it to end, or "
        f"choose another {setting} (if no such process runs, remove {folder / LOCK_FILE})"
    )


@contextmanager
def run_lock(folder: Path, setting: str) -> Iterator[None]:
    """Hold ``folder``'s lock while the block runs; ``RunInUseError`` naming ``setting`` when
    a live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(["python", *sys.argv]),
        "since": datetime.now().isoformat(timespec="seconds"),
    }
    staged = folder / f".{LOCK_FILE}.{os.getpid()}.staged"
    staged.write_text(json.dumps(record) + "\n")
    try:
        while True:
            try:
                os.link(staged, path)  # atomic, and refused when the lock exists
                break
            except FileExistsError:
                holder = lock_holder(folder)
                if holder is not None:
                    raise RunInUseError(in_use_message(folder, holder, setting)) from None
                log.info("Taking over the stale lock %s", path)
                path.unlink(missing_ok=True)
    finally:
        staged.unlink(missing_ok=True)
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
