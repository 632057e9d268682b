"""Checks of a composed config that the constructors cannot make, run before anything is built.

The constructors of models, tasks and data modules check their own arguments (attention kind,
divisibility, positive sizes) and ``training.instantiate_setting`` names the config key in
their messages. What is left is checked here, before any model is built or data is read:
settings only the Trainer sees, the seed, the output directory and the checkpoint to resume.
Every problem found is reported, one line each, naming the key to change, and the run exits
with status 2 before training. What a user sees, setting by setting:

    - `model.attention=flash`: model.attention='flash' is not a known attention kind; choose one
      of scratch, scratch_fused, scratch_flash, scratch_triton, torch
    - `model.n_heads=3`: model.d_model=64 is not divisible by n_heads=3: each head gets d_model
      / n_heads features
    - `model.tokens=patches model.patch_size=5`: model.patch_size=5 does not divide
      image_size=28; pick a patch_size that does (for 28: 2, 4, 7, 14)
    - `model=vit model.class_token=false` (pooling stays `cls`): model.pooling='cls' needs the
      class token, but class_token=false; set class_token=true or pooling=mean
    - `model.d_model=0`: model.d_model=0 must be positive
    - `model.attention=scratch_triton` on a CPU: model.attention=scratch_triton runs a Triton
      kernel, which needs a CUDA GPU (trainer=gpu); on the CPU choose
      model.attention=scratch_flash ..., or set TRITON_INTERPRET=1 ...
    - `data.batch_size=0`: data.batch_size=0 and data.eval_batch_size=512 must be positive
    - `callbacks.attention_maps.num_samples=64 data.eval_batch_size=8`:
      callbacks.attention_maps.num_samples=64 but the first evaluation batch has only 8 samples;
      lower num_samples or raise data.eval_batch_size
    - `trainer.precision=64-fake`: trainer.precision=64-fake is not known; choose one of
      32-true, 16-mixed, bf16-mixed (...)
    - `trainer.accelerator=quantum`: trainer.accelerator=quantum is not known; choose one of
      auto, gpu, cpu, cuda, mps, tpu
    - `trainer.accelerator=gpu` (no GPU): trainer.accelerator=gpu is not available on this
      machine; use trainer.accelerator=cpu (or auto)
    - `trainer.max_epochs=0`: trainer.max_epochs=0 trains nothing; give a positive number of
      epochs
    - `seed=-1`: seed=-1 must be an integer from 0 to 4294967295
    - `ckpt_path=missing.ckpt`: ckpt_path=missing.ckpt does not exist; give a .ckpt file, or
      ckpt_path=last
    - `ckpt_path=last` (nothing saved there): ckpt_path=last: there is no
      <run_dir>/checkpoints/last.ckpt. Name the run directory to resume in: ...
    - unwritable output dir (`paths.output_dir=/dev/null/run`, `hydra.run.dir=/proc/x`, read-
      only, immutable; runs and sweeps): hydra.run.dir=… is not writable (Not a directory);
      choose another run directory with hydra.run.dir=...
    - disk nearly full (under 200 MiB free): paths.output_dir=… is on a disk with 10 MiB free,
      less than the 200 MiB a run needs ...
    - data missing, no network: MNIST is not in …/MNIST/raw and could not be downloaded (…). Put
      the four IDX files there, or point data.data_dir=... (or the DATA_DIR environment
      variable) at a folder that has MNIST/raw.
    - truncated or non-checkpoint `ckpt_path`: ckpt_path=… is not a whole checkpoint file:
      torch.save writes a zip archive and this is not one ...
    - checkpoint containing pickled objects: ckpt_path=… holds objects other than tensors and
      plain values, which are not loaded (weights_only=True) because unpickling them could run
      code
    - checkpoint of another model: ckpt_path=… does not fit this model: 16 weights of another
      shape (...). Resume with the model settings it was trained with (its run directory's
      .hydra/config.yaml)
    - NaN or inf loss: train/loss is nan at epoch 1 step 3: training stopped; the last good
      checkpoint is …/checkpoints/last.ckpt. Lower task.optimizer.lr, keep
      trainer.gradient_clip_val, or check the data
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

from attention_lab.errors import ConfigError
from attention_lab.run.checkpoints import resolve_ckpt_path

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
        _triton_problem(cfg),
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


def _triton_problem(cfg: DictConfig) -> str | None:
    """scratch_triton needs triton, and a CUDA GPU unless Triton's CPU interpreter is on; its
    kernel takes no gradient for the mask, so not a learned position bias either."""
    model = cfg.get("model") or {}
    if model.get("attention") != "scratch_triton":
        return None
    if model.get("positional") == "relative":
        return (
            "model.positional=relative learns its attention bias, which scratch_triton's kernel "
            "does not differentiate: use model.attention=scratch_flash, scratch or torch, or "
            "model.positional=alibi"
        )
    from attention_lab.nn import triton_flash

    if problem := triton_flash.available():
        return problem
    accelerator = (cfg.get("trainer") or {}).get("accelerator", "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not CUDAAccelerator.is_available())
    return triton_flash.device_problem(on_cuda=not on_cpu)


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
