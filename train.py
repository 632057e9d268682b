"""Train and test a model: ``python train.py [experiment=NAME] [key=value ...]`` (see README)."""

from __future__ import annotations

import errno
import logging
import shutil
import sys
from pathlib import Path

import hydra
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from attention_lab.errors import (
    AttentionLabError,
    DiskFullError,
    RunInUseError,
    TrainingInterrupted,
)
from attention_lab.run.attempts import Attempt, record_refusal
from attention_lab.run.checkpoints import resume_command
from attention_lab.run.lock import run_lock
from attention_lab.run.records import FAILURE_FILE, record_failure
from attention_lab.run.training import train

log = logging.getLogger("train")


def disk_full(error: BaseException, run_dir: Path, resume: str) -> DiskFullError | None:
    """``error`` as one line naming the run directory, the space left and what to do, when a
    full disk or quota (ENOSPC, EDQUOT) caused it, however deep in its chain of causes; else
    None."""
    causes: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in causes:  # a chain of contexts can loop
        causes.append(cause)
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    full = (errno.ENOSPC, errno.EDQUOT)
    cause = next((c for c in causes if isinstance(c, OSError) and c.errno in full), None)
    if cause is None:
        return None
    filename = getattr(cause, "filename", None)
    disk = Path(filename).parent if filename else run_dir
    try:
        free = f"{shutil.disk_usage(disk).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    where = f" writing {filename}" if filename else ""
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    then = (
        f"its checkpoints are whole ({', '.join(p.name for p in checkpoints)}); free some "
        f"space, then resume with: {resume}"
        if checkpoints
        else "no checkpoint was saved yet; free some space and run the command again"
    )
    return DiskFullError(f"The disk holding {disk} is full ({free}){where}; {then}")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for hyper-parameter searches.

    A bad setting exits with status 2, an interruption with 130 (SIGINT) or 143 (SIGTERM) and a
    resume command. In a sweep (``-m``) a failing job is recorded in its directory
    (``failure.json``) and the sweep goes on; an interruption stops the sweep. Every command
    leaves a record in ``.hydra/attempts/`` (see ``attention_lab.run.attempts``). The run
    directory's lock (``attention_lab.run.lock``) is held from before anything is written there
    until the end: a second command aimed at it is refused, with one line naming this one.
    """
    try:
        with run_lock(Path(cfg.paths.output_dir), "hydra.run.dir"):
            return _run(cfg)
    except RunInUseError as err:
        log.error("%s", err)
        record_refusal(err, err.exit_code)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweep goes on
            return float("nan") if cfg.get("optimized_metric") else None
        sys.exit(err.exit_code)


def _run(cfg: DictConfig) -> float | None:
    """``main``'s work, with the run directory locked."""
    hydra_cfg = HydraConfig.get()
    attempt = Attempt.current()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep and cfg.get("logger") and cfg.logger.get("wandb"):
        # One W&B group per sweep: "<experiment>-<sweep start time>".
        with open_dict(cfg):
            cfg.logger.wandb.group = f"{cfg.experiment_name}-{Path(hydra_cfg.sweep.dir).name}"
    exit_code = 1  # anything not caught below is a crash
    error: BaseException | None = None
    # A log line that cannot be written (a full disk) is dropped, not a traceback on stderr.
    logging.raiseExceptions = False
    resume = resume_command(hydra_cfg.overrides.task, cfg.paths.output_dir)
    try:
        metrics = train(cfg, on_start=attempt.start_training if attempt else None)
        exit_code = 0
    except Exception as caught:
        err = disk_full(caught, Path(cfg.paths.output_dir), resume) or caught
        error = err
        if attempt is None or attempt.writes_run:  # a refused resume leaves the run as it was
            record_failure(Path(cfg.paths.output_dir), err)
        if isinstance(err, TrainingInterrupted):
            exit_code = err.exit_code
            log.error("%s. Resume with: %s", err, resume)
            sys.exit(exit_code)
        if isinstance(err, AttentionLabError):
            exit_code = err.exit_code
            log.error("%s", err)
        else:
            log.exception("The run failed")
        if in_sweep:
            # NaN, not None: a hyper-parameter sweeper counts the trial as failed and goes on.
            return float("nan") if cfg.get("optimized_metric") else None
        if isinstance(err, AttentionLabError):
            sys.exit(exit_code)
        raise
    finally:
        # Close the W&B run even when training failed, so its files are complete on disk.
        if wandb.run is not None:
            try:
                wandb.finish(exit_code=exit_code)
            except Exception as finish_error:  # e.g. a full disk: the run's message comes first
                log.warning("W&B could not close its run: %s", finish_error)
        log.info("Outputs: %s", cfg.paths.output_dir)
        if attempt is not None:
            attempt.end(exit_code, error, Path(cfg.paths.output_dir) / FAILURE_FILE)
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    return metrics["best_val"] if key == metrics["monitor"] else metrics["test"].get(key)


if __name__ == "__main__":
    main()
