"""Weights & Biases that never blocks a run: online with credentials, offline without.

Without credentials (no ``WANDB_API_KEY``, no ``~/.netrc`` entry) or without a reachable server,
the run is logged offline into the run directory, and ``wandb sync <dir>`` uploads it later.
``WANDB_MODE`` (online, offline, disabled), when set, is obeyed as it is.

The W&B run id is kept in the run directory (``wandb_id.txt``), so a run resumed in its own
directory (``ckpt_path=last hydra.run.dir=...``) continues the same W&B run. The API key is
never written anywhere: W&B reads it from the environment or ``~/.netrc`` itself.

``ResumableCSVLogger`` is Lightning's CSV logger, except that a run resumed in its directory
appends to ``csv/metrics.csv`` instead of deleting it.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import secrets
import socket
import string
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
RUN_ID_FILE = "wandb_id.txt"
RUN_ID_ALPHABET = string.ascii_lowercase + string.digits


def _has_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wandb_mode(timeout_s: float = 3.0) -> tuple[str, str | None]:
    """(mode, reason): ``WANDB_MODE`` if set, else online when credentials and server allow."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], None
    url = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL))
    host = url.hostname or "api.wandb.ai"
    if not _has_credentials(host):
        return "offline", "no W&B credentials (WANDB_API_KEY or `wandb login`)"
    port = url.port or (443 if url.scheme == "https" else 80)
    if not _reachable(host, port, timeout_s):
        return "offline", f"the W&B server {host} cannot be reached"
    return "online", None


def run_id(save_dir: str | Path) -> str:
    """The W&B run id kept in ``save_dir``, made and written there by the directory's first run."""
    path = Path(save_dir) / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    new_id = "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(8))  # W&B's own format
    path.write_text(new_id + "\n")
    return new_id


def wandb_logger(
    *,
    project: str,
    save_dir: str,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    job_type: str = "train",
) -> WandbLogger:
    """A ``WandbLogger`` writing under ``save_dir/wandb``, offline when it has to be."""
    mode, reason = wandb_mode()
    if reason is not None:
        log.warning(
            "W&B logs offline to %s/wandb: %s. "
            "Upload later with `wandb sync %s/wandb/offline-run-*`.",
            save_dir,
            reason,
            save_dir,
        )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        id=run_id(save_dir),
        resume="allow",  # a new id starts a run, a kept one continues it
        project=project,
        save_dir=save_dir,
        name=name,
        group=group,
        tags=list(tags or []),
        job_type=job_type,
        mode=mode,
        log_model=False,
    )


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, which keeps an existing ``metrics.csv`` and continues it."""

    def _check_log_dir_exists(self) -> None:
        # Lightning's own deletes metrics.csv here ("previous log files ... will be deleted").
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])  # its columns, sorted


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume: new rows are appended, and new
    columns rewrite the header, keeping the earlier rows."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
