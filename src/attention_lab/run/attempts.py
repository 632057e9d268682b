"""Every command aimed at a run directory is an *attempt*, recorded beside the run's own config.

A run directory outlives the command that made it: it is resumed (``ckpt_path=last
hydra.run.dir=<run>``), extended, and sometimes hit by a mistyped command. Hydra writes its
config files (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``) into ``hydra.output_subdir``
*before* the task runs, so with Hydra's default (``.hydra``) every command, even one refused at
once, replaced the run's config. ``conf/hydra/default.yaml`` therefore points ``output_subdir``,
and Hydra's log file, at a folder of the command's own, ``.hydra/attempts/<start time>/``. No
command can overwrite what an earlier one wrote, and nothing has to be snapshotted and restored
(which a crash between the two would defeat). Then:

- The first attempt to start training in a directory makes the run: its three files are copied
  to ``.hydra/``, which later attempts never touch, and its log goes to ``train.log`` as well.
  (Until one has started, the folder holds no run, and each attempt does the same, so a
  command refused in a new folder still leaves ``.hydra/config.yaml`` and ``failure.json``
  for the report to find.)
- A later attempt (a resume, or a command refused because of a bad setting, a damaged or
  mismatched checkpoint, or missing data) writes only its own record until training is about
  to start (``training.train`` calls ``Attempt.start_training``). A refused attempt thus changes
  nothing else in the directory. From that point its log is appended to ``train.log`` and a
  failure replaces ``failure.json``, as the first attempt's would.
- Each record has ``outcome.json``: ``started`` when training starts, then ``finished``,
  ``interrupted``, ``failed`` or ``refused`` (a bad setting, checkpoint or data found before
  training started), with the exit code, the error and the times. One left at ``started`` was
  killed outright.
- When an attempt finishes the run, a ``failure.json`` left by an earlier one (an interruption)
  is moved into this attempt's record as ``superseded_failure.json``, and ``metrics.json`` names
  this attempt's ``config.yaml`` (``attempt_config_file``): the config that produced the final
  weights.

``CheckOutputDir``, a Hydra callback, checks ``hydra.run.dir`` (or ``hydra.sweep.dir``) before
Hydra creates it, so that a folder that cannot be created or written ends the command with one
message naming the setting, not with Hydra's traceback.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from attention_lab.errors import AttentionLabError, ConfigError, TrainingInterrupted
from attention_lab.run.config import output_dir_problem
from attention_lab.run.records import write_atomic

log = logging.getLogger(__name__)

RUN_CONFIG_DIR = ".hydra"  # the first attempt's config: the run's own
ATTEMPTS_DIR = f"{RUN_CONFIG_DIR}/attempts"
CONFIG_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
OUTCOME_FILE = "outcome.json"
SUPERSEDED_FAILURE_FILE = "superseded_failure.json"
LOG_FILE = "train.log"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format

# The command's start names its attempt folder: the same in every job directory of a sweep.
STARTED = datetime.now()
OmegaConf.register_new_resolver(
    "attempt_time", lambda: STARTED.strftime("%Y-%m-%d_%H-%M-%S-%f"), replace=True
)
# Where the command's log goes: its attempt folder; the run directory itself when Hydra writes no
# output subdir (the other ranks of a DDP run, which Lightning launches with output_subdir=null).
OmegaConf.register_new_resolver(
    "attempt_log_dir",
    lambda run_dir, subdir: run_dir if subdir is None else f"{run_dir}/{subdir}",
    replace=True,
)


def _attempt_record() -> tuple[Path, Path] | None:
    """(run directory, this attempt's record folder) under Hydra, else None."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    subdir = hydra_cfg.get("output_subdir")
    output_dir = OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None)
    if subdir is None or output_dir is None:
        return None
    run_dir = Path(output_dir)
    record = run_dir / subdir
    # Only where the config keeps Hydra's files apart per attempt (not hydra.output_subdir=.hydra).
    return (run_dir, record) if record.parent == run_dir / ATTEMPTS_DIR else None


def attempt_config_file() -> str | None:
    """This attempt's ``config.yaml``, relative to the run directory (None outside Hydra)."""
    found = _attempt_record()
    return None if found is None else str(found[1].relative_to(found[0]) / "config.yaml")


class Attempt:
    """This command's record in its run directory; see the module docstring."""

    def __init__(self, run_dir: Path, record: Path) -> None:
        self.run_dir = run_dir
        self.record = record
        self.makes_run = not _run_started(run_dir)
        self.started = datetime.now()
        self.training_started = False
        self._log_handler: logging.Handler | None = None
        if self.makes_run:
            self._claim_run()

    @classmethod
    def current(cls) -> Attempt | None:
        """The attempt of the Hydra job running now (None outside Hydra or without records)."""
        found = _attempt_record()
        return None if found is None else cls(*found)

    @property
    def writes_run(self) -> bool:
        """Whether this attempt may write the run's own files (train.log, failure.json)."""
        return self.makes_run or self.training_started

    def start_training(self) -> None:
        """Training is about to write to the run directory: from now on, it is this run's."""
        if not self.training_started:
            self.training_started = True
            self._write_outcome({"outcome": "started", "training_started": True})
            if not self.makes_run:
                self._claim_run()

    def _claim_run(self) -> None:
        if self.makes_run:
            (self.run_dir / RUN_CONFIG_DIR).mkdir(parents=True, exist_ok=True)
            for name in CONFIG_FILES:
                if (self.record / name).is_file():  # whole or absent, as every record
                    write_atomic(
                        self.run_dir / RUN_CONFIG_DIR / name, (self.record / name).read_text()
                    )
        self._log_to_run()

    def _log_to_run(self) -> None:
        """Append this attempt's log so far to the run's ``train.log``, then log there too."""
        root = logging.getLogger()
        attempt_log = next(
            (
                handler
                for handler in root.handlers
                if isinstance(handler, logging.FileHandler)
                and Path(handler.baseFilename).parent == self.record
            ),
            None,
        )
        run_log = self.run_dir / LOG_FILE
        if attempt_log is not None:
            attempt_log.flush()
            if Path(attempt_log.baseFilename).is_file():
                with run_log.open("a") as out:
                    out.write(Path(attempt_log.baseFilename).read_text())
        self._log_handler = logging.FileHandler(run_log, mode="a")
        formatter = attempt_log.formatter if attempt_log is not None else None
        self._log_handler.setFormatter(formatter or logging.Formatter(LOG_FORMAT))
        root.addHandler(self._log_handler)

    def _write_outcome(self, record: dict[str, Any]) -> None:
        """Write ``outcome.json`` atomically; a disk that cannot take it (full, read-only) is a
        warning: the command's own message has been reported already."""
        try:
            self.record.mkdir(parents=True, exist_ok=True)
            write_atomic(self.record / OUTCOME_FILE, json.dumps(record, indent=2) + "\n")
        except OSError as err:
            log.warning("No %s in %s: %s", OUTCOME_FILE, self.record, err)

    def outcome(self, error: BaseException | None) -> str:
        """finished, interrupted, refused (a bad setting found before training) or failed."""
        if error is None:
            return "finished"
        if isinstance(error, TrainingInterrupted):
            return "interrupted"
        if self.training_started or not isinstance(error, AttentionLabError):
            return "failed"
        return "refused"

    def end(self, exit_code: int, error: BaseException | None, failure_file: Path) -> None:
        """Write ``outcome.json``; a finished run's earlier ``failure_file`` is superseded."""
        outcome = self.outcome(error)
        record: dict[str, Any] = {
            "outcome": outcome,
            "training_started": self.training_started,
            "exit_code": exit_code,
            "error": None if error is None else f"{type(error).__name__}: {error}".strip(),
            "started": self.started.isoformat(timespec="seconds"),
            "ended": datetime.now().isoformat(timespec="seconds"),
        }
        if outcome == "finished" and failure_file.is_file():
            shutil.move(failure_file, self.record / SUPERSEDED_FAILURE_FILE)
            record["superseded"] = SUPERSEDED_FAILURE_FILE
        self._write_outcome(record)
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


def record_refusal(error: BaseException, exit_code: int) -> None:
    """This command's ``outcome.json`` when it was refused before it could claim anything (its
    run directory was in use): its own record, nothing of the run's touched."""
    found = _attempt_record()
    if found is None:
        return
    now = datetime.now().isoformat(timespec="seconds")
    record = {
        "outcome": "refused",
        "training_started": False,
        "exit_code": exit_code,
        "error": f"{type(error).__name__}: {error}".strip(),
        "started": now,
        "ended": now,
    }
    try:
        found[1].mkdir(parents=True, exist_ok=True)
        write_atomic(found[1] / OUTCOME_FILE, json.dumps(record, indent=2) + "\n")
    except OSError as err:
        log.warning("No %s in %s: %s", OUTCOME_FILE, found[1], err)


def _run_started(run_dir: Path) -> bool:
    """Whether an earlier attempt started training here (or the folder predates the records)."""
    if not (run_dir / RUN_CONFIG_DIR / "config.yaml").is_file():
        return False
    attempts = read_attempts(run_dir)
    return not attempts or any(
        attempt.get("training_started", attempt.get("outcome") != "refused") for attempt in attempts
    )


def read_attempts(run_dir: str | Path) -> list[dict[str, Any]]:
    """Each attempt's outcome in a run directory, oldest first, with its ``record`` folder."""
    records = sorted((Path(run_dir) / ATTEMPTS_DIR).glob(f"*/{OUTCOME_FILE}"))
    return [
        {**json.loads(path.read_text()), "record": str(path.parent.relative_to(run_dir))}
        for path in records
    ]


class CheckOutputDir(Callback):
    """Hydra callback: stop with one message if the run or sweep folder cannot be written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_if_unwritable(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_if_unwritable(config.hydra.sweep.dir, "hydra.sweep.dir")


def _exit_if_unwritable(output_dir: str, key: str) -> None:
    # Logging is not configured yet (Hydra does it for each job), and Hydra would print a
    # traceback for an exception: say it on stderr and exit with the bad-setting status.
    problem = output_dir_problem(Path(str(output_dir)), key, hint=key)
    if problem is not None:
        print(f"Error: {problem}", file=sys.stderr)
        sys.exit(ConfigError.exit_code)
