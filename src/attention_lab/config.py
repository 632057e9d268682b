"""Checks of a composed config that the constructors cannot make, run before anything is built.

The constructors of models, tasks and data modules check their own arguments (attention kind,
divisibility, positive sizes) and ``training.instantiate_setting`` names the config key in
their messages. What is left is checked here, before any model is built or data is read:
settings only the Trainer sees, the seed, the output directory and the checkpoint to resume.
Every problem found is reported, one line each, naming the key to change.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator
from omegaconf import DictConfig

from attention_lab.checkpoints import resolve_ckpt_path
from attention_lab.errors import ConfigError

# What Lightning's Trainer accepts; the project uses 32-true, 16-mixed and bf16-mixed.
PRECISIONS = (
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "64-true",
    "16-true",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
    "64",
    "32",
    "16",
    "bf16",
)
MAX_SEED = 2**32 - 1  # NumPy's limit, which Lightning's seed_everything enforces
MIN_FREE_BYTES = 200 * 2**20  # room for a few checkpoints and the logs of a small run


def validate(cfg: DictConfig) -> None:
    """Raise one ``ConfigError`` listing every problem found, one line per config key."""
    problems = [
        _seed_problem(cfg.get("seed")),
        *_trainer_problems(cfg.get("trainer") or {}),
        _output_dir_problem(Path(cfg.paths.output_dir)),
        _checkpoint_problem(cfg.get("ckpt_path"), cfg.paths.checkpoint_dir),
    ]
    problems = [problem for problem in problems if problem is not None]
    if problems:
        raise ConfigError("\n".join(problems))


def _seed_problem(seed: Any) -> str | None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        return f"seed={seed} must be an integer from 0 to {MAX_SEED}"
    return None


def _trainer_problems(trainer: DictConfig | dict) -> list[str | None]:
    precision = trainer.get("precision", "32-true")
    accelerator = trainer.get("accelerator", "auto")
    max_epochs = trainer.get("max_epochs")
    problems = []
    if str(precision) not in PRECISIONS:
        problems.append(
            f"trainer.precision={precision} is not known; choose one of 32-true, 16-mixed, "
            f"bf16-mixed (or {', '.join(PRECISIONS[3:8])})"
        )
    problems.append(_accelerator_problem(accelerator))
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < -1):
        problems.append(f"trainer.max_epochs={max_epochs} must be a positive integer (or -1)")
    elif max_epochs == 0:
        problems.append("trainer.max_epochs=0 trains nothing; give a positive number of epochs")
    return problems


def _accelerator_problem(accelerator: Any) -> str | None:
    if not isinstance(accelerator, str) or accelerator == "auto":
        return None  # an Accelerator object, or Lightning's own choice
    if accelerator == "gpu":
        available = CUDAAccelerator.is_available() or MPSAccelerator.is_available()
    elif accelerator in AcceleratorRegistry:
        available = AcceleratorRegistry[accelerator]["accelerator"].is_available()
    else:
        known = ", ".join(["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())])
        return f"trainer.accelerator={accelerator} is not known; choose one of {known}"
    if not available:
        return (
            f"trainer.accelerator={accelerator} is not available on this machine; "
            f"use trainer.accelerator=cpu (or auto)"
        )
    return None


def _output_dir_problem(output_dir: Path) -> str | None:
    problem = output_dir_problem(output_dir, "paths.output_dir")
    if problem is not None:
        return problem
    output_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(output_dir).free
    if free < MIN_FREE_BYTES:
        return (
            f"paths.output_dir={output_dir} is on a disk with {free / 2**20:.0f} MiB free, less "
            f"than the {MIN_FREE_BYTES // 2**20} MiB a run needs for checkpoints and logs; "
            f"free some space or choose another run directory with hydra.run.dir=..."
        )
    return None


def output_dir_problem(output_dir: Path, key: str, hint: str = "hydra.run.dir") -> str | None:
    """Why ``output_dir`` (the setting ``key``) cannot hold a run, or None when it can.

    Writing is the one sure test (a root user ignores permission bits, but not an immutable
    folder, a read-only filesystem or /proc), and it leaves nothing behind: a folder that does
    not exist yet is tried as a temporary folder in its nearest existing parent.
    """
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        if existing == output_dir:
            with tempfile.TemporaryFile(dir=output_dir):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as err:
        return (
            f"{key}={output_dir} is not writable ({err.strerror or err}); "
            f"choose another run directory with {hint}=..."
        )
    return None


def _checkpoint_problem(ckpt_path: Any, checkpoint_dir: str) -> str | None:
    try:
        resolve_ckpt_path(ckpt_path, checkpoint_dir)
    except ConfigError as err:
        return str(err)
    return None
