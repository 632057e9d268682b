"""Train and test a model: ``python train.py [experiment=NAME] [key=value ...]`` (see README)."""

from __future__ import annotations

import logging
import sys

import hydra
import wandb
from omegaconf import DictConfig

from attention_lab.errors import AttentionLabError
from attention_lab.training import train

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for hyper-parameter searches."""
    failed = True
    try:
        metrics = train(cfg)
        failed = False
    except AttentionLabError as err:
        log.error("%s", err)
        sys.exit(2)
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
