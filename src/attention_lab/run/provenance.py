"""Where a run came from: machine, library versions and git commit, for ``metrics.json``.

Every run's ``metrics.json`` carries ``provenance()`` under ``"provenance"``, so a committed run
record (``outputs/results/``) says on what, with what and from which code its figure was
measured. Nothing here fails a run: a fact that cannot be read (no git, no ``/proc/cpuinfo``) is
``None``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "lightning", "torchmetrics", "hydra-core")


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def machine() -> dict[str, Any]:
    """CPU model and cores (all, and those this process may use), GPU names, torch threads, and
    the load average over the last 15 minutes: above the usable cores, the run shared the CPU
    and its times are longer than the run alone would take."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "load_avg_15min": round(os.getloadavg()[2], 1) if hasattr(os, "getloadavg") else None,
    }


def package_versions() -> dict[str, str | None]:
    """Python's version and each of ``PACKAGES``' installed versions (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(path: Path | None = None) -> dict[str, Any]:
    """The commit checked out at ``path`` (default: this package's checkout) and whether the
    tree had uncommitted changes to tracked files; ``None`` values outside a git checkout."""
    where = str(path or Path(__file__).resolve().parent)

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", where, *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


# Taken when the package is imported, that is when the run's code was read: files edited while
# the run trains do not change the code it runs, and must not mark its record dirty.
GIT_AT_START = git_state()


def provenance() -> dict[str, Any]:
    """Machine, versions, git state (at import), the command line and the time (UTC) now."""
    return {
        "machine": machine(),
        "versions": package_versions(),
        "git": GIT_AT_START,
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def machine_class(info: dict[str, Any]) -> str:
    """The kind of machine, for grouping runs: the GPU name(s), else the CPU model and core
    count."""
    if info.get("gpus"):
        names = sorted(set(info["gpus"]))
        count = len(info["gpus"])
        return f"{count}× {names[0]}" if len(names) == 1 else ", ".join(names)
    cpu = info.get("cpu") or "unknown CPU"
    cores = info.get("cpu_cores_usable") or info.get("cpu_cores")
    return f"{cpu}, {cores} cores" if cores else cpu


def describe_machine(info: dict[str, Any]) -> str:
    """One short line for a table: ``machine_class``, and on a CPU the load average when it was
    above the core count (other jobs used the CPU)."""
    line = machine_class(info)
    cores = info.get("cpu_cores_usable") or info.get("cpu_cores")
    load = info.get("load_avg_15min")
    if not info.get("gpus") and cores and load is not None and load > cores:
        line += f" (shared: load {load})"
    return line
