"""Checkpoints to write whole (``AtomicCheckpointIO``); to resume from: name them
(``ckpt_path=last``: the newest that loads), read them safely, check the fit; and checkpoints
to use (``load_trained``: the one loader of ``evaluate`` and, through
``commands.load_trained_run``, of ``translate``, ``tag`` and ``classify``).

Every checkpoint is unpickled with ``weights_only=True``: tensors and plain values only, so a
file from elsewhere cannot run code. The task keeps its hyper-parameters plain for that reason.
"""

from __future__ import annotations

import functools
import logging
import pickle
import shlex
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from attention_lab.errors import ConfigError
from attention_lab.run.records import atomic_file

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"  # ModelCheckpoint(save_last=True) and CheckpointOnSignal write it
# Checkpoint entry of a run over a pretrained body: its architecture (``Bert.settings``), so that
# the commands rebuild the model without the pretrained files (the run's weights replace them).
PRETRAINED_ARCHITECTURE_KEY = "pretrained_architecture"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing each file beside its target on the same disk and
    renaming it into place (``records.atomic_file``): a kill, a power cut or a full disk in the
    middle of a save leaves the previous file whole, never a torn one. (Lightning's own writer
    stages the bytes in the system's temporary folder and copies them over when that is another
    file system, which is not atomic.)"""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # a remote store: Lightning's
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:
            torch.save(checkpoint, handle)


def resolve_ckpt_path(value: str | None, checkpoint_dir: str | Path) -> Path | None:
    """``ckpt_path`` as a file that exists: ``last`` is the newest checkpoint of
    ``checkpoint_dir`` that loads (``last.ckpt`` unless it cannot be read)."""
    if value is None or str(value) == "":
        return None
    if str(value) == "last":
        return newest_loadable(Path(checkpoint_dir))
    path = Path(str(value)).expanduser()
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise ConfigError(f"ckpt_path={value} {what}; give a .ckpt file, or ckpt_path=last")
    return path


def newest_loadable(folder: Path) -> Path:
    """``folder/last.ckpt`` if it loads, else the newest other ``.ckpt`` there that does (a
    warning says which were passed over and why); ``ConfigError`` when none does."""
    last = folder / LAST_CHECKPOINT
    others = [path for path in folder.glob("*.ckpt") if path.name != LAST_CHECKPOINT]
    others.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    candidates = [last] * last.is_file() + others
    if not candidates:
        raise ConfigError(
            f"ckpt_path=last: there is no {last}. Name the run directory to resume in: "
            f"python train.py ckpt_path=last hydra.run.dir=outputs/runs/<date>/<time>"
        )
    passed_over = []
    for path in candidates:
        stat = path.stat()
        problem = _load_problem(str(path), stat.st_mtime_ns, stat.st_size)
        if problem is not None:
            passed_over.append(f"{path.name}: {problem}")
            continue
        if passed_over:
            log.warning(
                "ckpt_path=last: resuming from %s, the newest checkpoint that loads; passed "
                "over %s",
                path,
                "; ".join(passed_over),
            )
        return path
    raise ConfigError(
        f"ckpt_path=last: no checkpoint in {folder} loads ({'; '.join(passed_over)}); start "
        f"the run again in a new hydra.run.dir"
    )


@functools.lru_cache(maxsize=16)
def _load_problem(path: str, mtime_ns: int, size: int) -> str | None:
    """Why the checkpoint at ``path`` (as it was at ``mtime_ns`` and ``size``) cannot be read,
    None if it can: checking the config and then resuming read a file once."""
    try:
        read_checkpoint(Path(path))
    except ConfigError as err:
        return str(err)
    return None


def read_checkpoint(path: Path, setting: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint's contents, unpickled with ``weights_only=True`` onto the CPU; errors name
    ``setting``, the command's key for the file."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise ConfigError(
                f"{setting}={path} holds objects other than tensors and plain values, which "
                f"are not loaded (weights_only=True) because unpickling them could run code"
            ) from err
        raise _unreadable(path, err, setting) from err
    # torch reports a damaged file as RuntimeError, EOFError, zipfile or unpickling errors.
    except Exception as err:
        raise _unreadable(path, err, setting) from err
    if not isinstance(checkpoint, dict) or not {"state_dict", "loops"} <= checkpoint.keys():
        raise ConfigError(
            f"{setting}={path} is not a Lightning training checkpoint (it has no state_dict "
            f"and loop state); resume from a .ckpt file in a run's checkpoints/ folder"
        )
    return checkpoint


def _unreadable(path: Path, err: BaseException, setting: str) -> ConfigError:
    # torch's own messages for a damaged file ("pop from empty list") explain nothing.
    if not zipfile.is_zipfile(path):
        problem = (
            "is not a whole checkpoint file: torch.save writes a zip archive and this is not "
            "one (cut short by an interrupted copy or a full disk, or another kind of file)"
        )
    else:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        problem = f"cannot be read as a checkpoint ({reason})"
    return ConfigError(f"{setting}={path} {problem}. Use another checkpoint from {path.parent}")


def run_config(ckpt: Path, config: str | Path | None = None) -> DictConfig:
    """The Hydra config of the run that wrote ``ckpt`` (or the file ``config``): by default the
    ``.hydra/config.yaml`` of the run directory that holds ``checkpoints/``."""
    path = Path(config) if config else ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"config: no run config at {path}; pass config=.../.hydra/config.yaml of the run "
            f"that wrote {ckpt}"
        )
    return OmegaConf.load(path)


def checkpoint_file(ckpt: str | Path) -> Path:
    """The commands' ``ckpt`` as a file that exists, else a ``ConfigError`` naming it."""
    path = Path(ckpt)
    if not path.is_file():
        raise ConfigError(f"ckpt={ckpt} is not a file; pass ckpt=PATH/TO/checkpoints/NAME.ckpt")
    return path


def load_trained(
    ckpt: str | Path, config: str | Path | None = None
) -> tuple[dict[str, Any], DictConfig]:
    """A checkpoint to use (not resume), read safely, and the config of the run that wrote it:
    what ``translate`` and ``evaluate`` start from. Errors name the commands' ``ckpt`` key."""
    path = checkpoint_file(ckpt)
    checkpoint, cfg = read_checkpoint(path, setting="ckpt"), run_config(path, config)
    if PRETRAINED_ARCHITECTURE_KEY in checkpoint:  # built from it, not from model.pretrained
        cfg.model.architecture = checkpoint[PRETRAINED_ARCHITECTURE_KEY]
    return checkpoint, cfg


def check_fits(checkpoint: dict[str, Any], module: nn.Module, path: Path) -> None:
    """Raise ``ConfigError`` unless the checkpoint's weights have ``module``'s names and shapes."""
    saved: dict[str, Any] = checkpoint["state_dict"]
    expected = module.state_dict()
    missing = sorted(expected.keys() - saved.keys())
    unexpected = sorted(saved.keys() - expected.keys())
    reshaped = [
        f"{key} is {tuple(saved[key].shape)} there, {tuple(expected[key].shape)} here"
        for key in sorted(expected.keys() & saved.keys())
        if isinstance(saved[key], Tensor) and saved[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} weights unknown to this model ({_some(unexpected)})")
    if reshaped:
        problems.append(f"{len(reshaped)} weights of another shape ({_some(reshaped)})")
    if problems:
        raise ConfigError(
            f"ckpt_path={path} does not fit this model: {'; '.join(problems)}. Resume with the "
            f"model settings it was trained with (its run directory's .hydra/config.yaml)"
        )


def _some(items: Sequence[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def resume_command(overrides: Sequence[str], run_dir: str | Path) -> str:
    """The command that resumes a run started with ``overrides`` in ``run_dir``."""
    kept = [
        override
        for override in overrides
        if override.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")
    ]
    words = ["python", "train.py", *kept, "ckpt_path=last", f"hydra.run.dir={run_dir}"]
    return " ".join(shlex.quote(word) for word in words)
