"""A run directory's records, in one room: the files that say what a run did, and the one place
that writes and reads them.

- ``metrics.json``: test metrics, best checkpoint, fit time, provenance (machine, versions, git
  commit, command) and the config of the attempt that made the final weights; written by
  ``write_metrics`` when a run finishes. Paths in it are relative to the run directory, so a
  record copied elsewhere (``outputs/results/``) still names its own files.
- ``history.jsonl``: one JSON line of metrics per epoch (``append_history``, ``read_history``).
- ``failure.json``: the error that stopped a run (``record_failure``).

Every write is atomic (``atomic_file``: written beside the target, flushed to the disk, then
renamed into place; checkpoints too, through ``checkpoints.AtomicCheckpointIO``), so a reader,
or a run killed in the middle of a write, only ever sees the old file or the new one. A
temporary file a kill leaves behind (``.NAME.PID.tmp``) is removed by the next command that
takes the run directory (``remove_temporaries``).
``load_run`` reads a run directory back as a ``Run`` (what reports and the results table use);
``find_runs`` finds every run below some folders.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
FAILURE_FILE = "failure.json"
HISTORY_FILE = "history.jsonl"
# The attention of a run whose model has none (a BiLSTM or CNN reference: no model.attention).
NO_ATTENTION = "none"


TEMPORARY_SUFFIX = ".tmp"


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through: a temporary file beside it (same file system),
    flushed to the disk and renamed over ``path`` when the block ends without an error (atomic
    on a POSIX file system); removed, and ``path`` left as it was, when it raises."""
    writer = f"{os.getpid()}-{threading.get_ident()}"
    temporary = path.with_name(f".{path.name}.{writer}{TEMPORARY_SUFFIX}")
    try:
        with temporary.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on the disk before the name points at them
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    try:  # and the rename itself survives a power cut
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass  # a file system that cannot sync a folder: the rename stands as written
    finally:
        os.close(folder)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``atomic_file``)."""
    with atomic_file(path) as handle:
        handle.write(text.encode())


def remove_temporaries(*folders: Path) -> list[Path]:
    """Remove the temporary files of ``atomic_file`` that a killed process left in ``folders``
    (call it holding the run directory's lock: no other process is writing there)."""
    removed = []
    for folder in folders:
        for path in folder.glob(f".*{TEMPORARY_SUFFIX}") if folder.is_dir() else []:
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("Removed what an interrupted write left: %s", ", ".join(map(str, removed)))
    return removed


def relative_to_run(path: str | Path | None, run_dir: Path) -> str | None:
    """``path`` relative to ``run_dir`` when it lies inside it (as written in records)."""
    if not path:
        return None
    if not Path(path).is_absolute():
        return str(path)  # relative already: to the run directory
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def write_metrics(
    run_dir: Path, metrics: dict[str, Any], *, paths_from: Path | None = None
) -> Path:
    """Write ``metrics.json`` into ``run_dir``, a checkpoint path in it relative to the run
    directory it lies in: ``paths_from`` (the run a record is copied from), else ``run_dir``."""
    record = dict(metrics)
    for key in ("best_checkpoint", "checkpoint"):
        if key in record:
            record[key] = relative_to_run(record[key], paths_from or run_dir)
    path = run_dir / METRICS_FILE
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` of a run directory, None if it has none (failed or still running)."""
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record_failure(run_dir: Path, error: BaseException) -> None:
    """Write ``failure.json`` (the error's type and message) so a report can show the failure.

    Where the folder cannot be written (the error may be just that), it is left out: the error
    has been reported, and the attempt's own record holds it.
    """
    message = f"{type(error).__name__}: {error}".strip()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / FAILURE_FILE, json.dumps({"error": message}, indent=2) + "\n")
    except OSError as err:
        log.debug("No %s in %s: %s", FAILURE_FILE, run_dir, err)


def read_failure(run_dir: Path) -> str | None:
    """The error ``failure.json`` holds, None without one."""
    path = Path(run_dir) / FAILURE_FILE
    return json.loads(path.read_text()).get("error") if path.is_file() else None


def append_history(run_dir: str | Path, row: dict[str, Any]) -> None:
    """Add one epoch's row to ``history.jsonl``."""
    path = Path(run_dir) / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    before = path.read_text() if path.is_file() else ""
    write_atomic(path, before + json.dumps(row) + "\n")  # a line is whole or absent


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``history.jsonl`` (empty if it has none)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Run:
    """What reports and the results table need of one run directory."""

    path: Path
    config: Path  # the config its settings are read from
    experiment: str
    attention: str
    seed: int | None
    metrics: dict[str, Any] | None  # None: the run failed or has not finished
    history: list[dict[str, Any]] = field(default_factory=list)
    reported: dict[str, Any] | None = None
    error: str | None = None

    @property
    def monitor(self) -> str:
        return (self.metrics or {}).get("monitor") or "val/acc"

    @property
    def test_metric(self) -> str:
        return "test/" + self.monitor.split("/", 1)[1]

    @property
    def test_value(self) -> float | None:
        return ((self.metrics or {}).get("test") or {}).get(self.test_metric)

    @property
    def samples_per_s(self) -> float | None:
        rates = [r["train/samples_per_s"] for r in self.history if "train/samples_per_s" in r]
        return statistics.median(rates) if rates else None


def find_runs(roots: list[Path]) -> list[Run]:
    """Every run directory at or below ``roots``, in path order."""
    found = []
    for root in roots:
        for config_file in sorted(root.glob("**/.hydra/config.yaml")):
            found.append(load_run(config_file.parent.parent))
    return found


def load_run(path: Path) -> Run:
    """One run directory. Its settings are read from the config that made its final weights
    (which ``metrics.json`` names), else from ``.hydra/config.yaml``."""
    metrics = read_metrics(path)
    config = path / ".hydra" / "config.yaml"
    if metrics is not None and metrics.get("config") and (path / metrics["config"]).is_file():
        config = path / metrics["config"]
    cfg = OmegaConf.load(config)
    reported = cfg.get("reported")
    return Run(
        path=path,
        config=config,
        experiment=str(cfg.get("experiment_name", "default")),
        attention=str(cfg.model.get("attention", NO_ATTENTION)),
        seed=cfg.get("seed"),
        metrics=metrics,
        history=read_history(path),
        reported=OmegaConf.to_container(reported) if reported is not None else None,
        error=read_failure(path) if metrics is None else None,
    )
