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

from attention_lab.errors import AttentionLabError
from attention_lab.training import record_failure, train

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for hyper-parameter searches.

    In a sweep (``-m``) a failing job is recorded in its directory (``failure.json``) and the
    sweep goes on; a single run exits with status 2 for a bad setting, and raises otherwise.
    """
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    if in_sweep and cfg.get("logger") and cfg.logger.get("wandb"):
        # One W&B group per sweep: "<experiment>-<sweep start time>".
        with open_dict(cfg):
            cfg.logger.wandb.group = (
                f"{cfg.experiment_name}-{Path(HydraConfig.get().sweep.dir).name}"
            )
    failed = True
    try:
        metrics = train(cfg)
        failed = False
    except Exception as err:
        record_failure(Path(cfg.paths.output_dir), err)
        if isinstance(err, AttentionLabError):
            log.error("%s", err)
        else:
            log.exception("The run failed")
        if in_sweep:
            return None
        if isinstance(err, AttentionLabError):
            sys.exit(2)
        raise
    finally:
        # Close the W&B run even when training failed, so its files are complete on disk.
        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
        log.info("Outputs: %s", cfg.paths.output_dir)
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    return metrics["best_val"] if key == metrics["monitor"] else metrics["test"].get(key)


if __name__ == "__main__":
    main()
