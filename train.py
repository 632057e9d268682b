"""Train and test a model: ``python train.py [experiment=NAME] [key=value ...]`` (see README)."""

from __future__ import annotations

import logging
import sys

import hydra
import wandb
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from attention_lab.checkpoints import resume_command
from attention_lab.errors import AttentionLabError, TrainingInterrupted
from attention_lab.training import train

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for hyper-parameter searches."""
    exit_code = 1  # anything not caught below is a crash
    try:
        metrics = train(cfg)
        exit_code = 0
    except AttentionLabError as err:
        exit_code = err.exit_code
        if isinstance(err, TrainingInterrupted):
            overrides = HydraConfig.get().overrides.task
            log.error("%s. Resume with: %s", err, resume_command(overrides, cfg.paths.output_dir))
        else:
            log.error("%s", err)
        sys.exit(exit_code)
    finally:
        # Close the W&B run even when training failed, so its files are complete on disk.
        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
        log.info("Outputs: %s", cfg.paths.output_dir)
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    return metrics["best_val"] if key == metrics["monitor"] else metrics["test"].get(key)


if __name__ == "__main__":
    main()
