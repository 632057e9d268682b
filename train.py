"""Train and test a model: ``python train.py [experiment=NAME] [key=value ...]`` (see README)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from attention_lab.errors import AttentionLabError, TrainingInterrupted
from attention_lab.run.attempts import Attempt
from attention_lab.run.checkpoints import resume_command
from attention_lab.run.records import FAILURE_FILE, record_failure
from attention_lab.run.training import train

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for hyper-parameter searches.

    A bad setting exits with status 2, an interruption with 130 (SIGINT) or 143 (SIGTERM) and a
    resume command. In a sweep (``-m``) a failing job is recorded in its directory
    (``failure.json``) and the sweep goes on; an interruption stops the sweep. Every command
    leaves a record in ``.hydra/attempts/`` (see ``attention_lab.run.attempts``).
    """
    hydra_cfg = HydraConfig.get()
    attempt = Attempt.current()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep and cfg.get("logger") and cfg.logger.get("wandb"):
        # One W&B group per sweep: "<experiment>-<sweep start time>".
        with open_dict(cfg):
            cfg.logger.wandb.group = f"{cfg.experiment_name}-{Path(hydra_cfg.sweep.dir).name}"
    exit_code = 1  # anything not caught below is a crash
    error: BaseException | None = None
    try:
        metrics = train(cfg, on_start=attempt.start_training if attempt else None)
        exit_code = 0
    except Exception as err:
        error = err
        if attempt is None or attempt.writes_run:  # a refused resume leaves the run as it was
            record_failure(Path(cfg.paths.output_dir), err)
        if isinstance(err, TrainingInterrupted):
            exit_code = err.exit_code
            command = resume_command(hydra_cfg.overrides.task, cfg.paths.output_dir)
            log.error("%s. Resume with: %s", err, command)
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
            wandb.finish(exit_code=exit_code)
        log.info("Outputs: %s", cfg.paths.output_dir)
        if attempt is not None:
            attempt.end(exit_code, error, Path(cfg.paths.output_dir) / FAILURE_FILE)
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    return metrics["best_val"] if key == metrics["monitor"] else metrics["test"].get(key)


if __name__ == "__main__":
    main()
