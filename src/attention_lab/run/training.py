"""One training run from a composed config: build, fit, test the best checkpoint, write metrics.

``train.py`` is the command-line entry (it adds Hydra's decorator); tests call ``train`` with a
config they compose themselves. The config is validated before anything is built; the model is
built before any data is read, unless the data decides some of its settings (a tokenizer's
vocabulary size); data files are checked before the first logger or trainer exists, and the
checkpoint to resume from against the model before training. A bad setting costs nothing.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from attention_lab.data.order import exact_resume
from attention_lab.errors import AttentionLabError, ConfigError
from attention_lab.run.attempts import attempt_config_file
from attention_lab.run.checkpoints import (
    AtomicCheckpointIO,
    check_fits,
    read_checkpoint,
    resolve_ckpt_path,
)
from attention_lab.run.config import validate
from attention_lab.run.lock import run_lock
from attention_lab.run.provenance import provenance
from attention_lab.run.records import (
    NO_ATTENTION,
    read_history,
    remove_temporaries,
    write_metrics,
)

log = logging.getLogger(__name__)


def instantiate_setting(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``; a failure becomes one ``ConfigError`` naming ``key``."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        raise _as_config_error(key, err.__cause__ or err) from err
    except (ValueError, TypeError) as err:
        raise _as_config_error(key, err) from err


def _as_config_error(key: str, cause: BaseException) -> AttentionLabError:
    if isinstance(cause, AttentionLabError):
        return cause
    message = str(cause).strip()
    # Our constructors start their messages with "name=value": make that the full config key.
    if re.match(r"^\w+=", message):
        return ConfigError(f"{key}.{message}")
    return ConfigError(f"{key}: {message} (check the `{key}` settings)")


# Model settings that only the data can know (the tokenizer decides the vocabulary sizes). A model
# config leaves them null and ``fill_model_settings_from_data`` fills them in.
DATA_DECIDED_MODEL_KEYS = ("src_vocab_size", "tgt_vocab_size", "vocab_size", "num_tags", "max_len")


def fill_model_settings_from_data(cfg: DictConfig, datamodule: Any) -> None:
    """Set each of the ``DATA_DECIDED_MODEL_KEYS`` that ``cfg.model`` leaves null to the data
    module's attribute of that name (read after ``prepare_data``), so that the model is built
    with, and the loggers record, the values the data decided."""
    for key in DATA_DECIDED_MODEL_KEYS:
        if key not in cfg.model or cfg.model[key] is not None:
            continue
        if not hasattr(datamodule, key):
            raise ConfigError(
                f"model.{key} is null, to be taken from the data, but data "
                f"{cfg.data._target_} has no {key}; set model.{key}=... or choose other data"
            )
        cfg.model[key] = getattr(datamodule, key)


def count_parameters(module: Any) -> int:
    """Trainable parameters of an ``nn.Module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_model(cfg: DictConfig) -> Any:
    """The ``nn.Module`` of ``cfg.model``; ``model.compile=true`` compiles it with torch.compile.

    ``compile`` is how the model is run, not a constructor argument, so it is taken out first.
    ``nn.Module.compile`` works in place: parameter names, and so checkpoints, stay the same.
    """
    options = OmegaConf.to_container(cfg.model, resolve=True)
    compile_model = bool(options.pop("compile", False))
    net = instantiate_setting(OmegaConf.create(options), "model")
    if compile_model:
        net.compile()
    return net


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Every non-null entry of ``cfg.callbacks``."""
    return [
        instantiate_setting(node, f"callbacks.{name}")
        for name, node in (cfg.get("callbacks") or {}).items()
        if node is not None
    ]


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Every non-null entry of ``cfg.logger`` (``logger=none`` gives none)."""
    return [
        instantiate_setting(node, f"logger.{name}")
        for name, node in (cfg.get("logger") or {}).items()
        if node is not None
    ]


def train(cfg: DictConfig, on_start: Callable[[], None] | None = None) -> dict[str, Any]:
    """Fit, then test the best checkpoint; returns (and writes) the run's metrics.

    ``on_start`` is called once every check has passed, before anything is written to the run
    directory (``train.py`` uses it to tell a refused command from a started one). The run
    directory's lock is held throughout (``run.lock``): a second command aimed at it is refused.
    """
    validate(cfg)
    run_dir = Path(cfg.paths.output_dir)
    with run_lock(run_dir, "hydra.run.dir"):
        remove_temporaries(run_dir, Path(cfg.paths.checkpoint_dir))  # of a killed write
        datamodule, task, ckpt_path = _build(cfg)
        if on_start is not None:
            on_start()
        return _fit_and_test(cfg, run_dir, datamodule, task, ckpt_path)


def _build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, Path | None]:
    """The data module, the task around its model, and the checkpoint to resume from, each
    checked (the checkpoint against the model, the data files on disk) before training."""
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.checkpoint_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_setting(cfg.data, "data")  # constructing it reads no files
    data_decides_model = any(cfg.model.get(key, 0) is None for key in DATA_DECIDED_MODEL_KEYS)
    if data_decides_model:
        # The tokenizer decides the vocabulary sizes: the data comes before the model.
        datamodule.prepare_data()
        fill_model_settings_from_data(cfg, datamodule)
    net = build_model(cfg)  # otherwise a bad model setting is reported before data is read
    task = instantiate_setting(cfg.task, "task", net=net)
    if ckpt_path is not None:
        resumed = read_checkpoint(ckpt_path)
        check_fits(resumed, task, ckpt_path)
        log.info(
            "Resuming from %s (epoch %s, step %s)",
            ckpt_path,
            resumed.get("epoch"),
            resumed.get("global_step"),
        )
        del resumed  # Lightning reads the file again; do not hold two copies
    if not data_decides_model:
        datamodule.prepare_data()  # missing data fails here, before any logger or trainer exists
    return datamodule, task, ckpt_path


def _fit_and_test(
    cfg: DictConfig,
    run_dir: Path,
    datamodule: L.LightningDataModule,
    task: L.LightningModule,
    ckpt_path: Path | None,
) -> dict[str, Any]:
    """Fit (checkpoints written whole: ``AtomicCheckpointIO``), test the best checkpoint, and
    write ``metrics.json``."""
    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg)
    trainer: L.Trainer = instantiate_setting(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    n_params = count_parameters(task.net)
    log.info("Model %s: %s trainable parameters", cfg.model._target_, f"{n_params:,}")
    for logger in loggers:
        logger.log_hyperparams(
            {**OmegaConf.to_container(cfg, resolve=True), "model/params": n_params}
        )

    started = time.perf_counter()
    # weights_only=True: checkpoints hold tensors and plain values, and loading runs no code.
    with exact_resume(datamodule):
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_time_s = time.perf_counter() - started

    metrics = _fit_record(cfg, trainer, n_params, fit_time_s, run_dir)
    best_path = metrics["best_checkpoint"] or ""
    if cfg.get("test"):
        if not best_path:
            log.warning("No best checkpoint was saved (fast_dev_run?): testing the final weights.")
        results = trainer.test(
            task, datamodule=datamodule, ckpt_path=best_path or None, weights_only=True
        )
        metrics["test"] = {k: _as_float(v) for k, v in (results[0] if results else {}).items()}
    metrics["provenance"] = provenance()  # machine, library versions, git commit
    if trainer.is_global_zero:
        write_metrics(run_dir, metrics)
    return metrics


def _fit_record(
    cfg: DictConfig, trainer: L.Trainer, n_params: int, fit_time_s: float, run_dir: Path
) -> dict[str, Any]:
    """What ``metrics.json`` says of the fit; ``test`` is filled by the caller."""
    # The first ModelCheckpoint (the config's model_checkpoint) chooses the checkpoint to test.
    checkpoint = next(
        (c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None
    )
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    metrics: dict[str, Any] = {
        "experiment": cfg.get("experiment_name"),
        "model": cfg.model._target_,
        "attention": cfg.model.get("attention", NO_ATTENTION),
        "seed": cfg.seed,
        "config": attempt_config_file(),  # the config of the attempt that made these weights
        "params": n_params,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "fit_time_s": round(fit_time_s, 2),
        "train_samples_per_s": _median_throughput(run_dir),
        "best_checkpoint": best_path or None,
        "monitor": checkpoint.monitor if checkpoint is not None else None,
        "best_val": _as_float(checkpoint.best_model_score) if checkpoint is not None else None,
        "test": {},
    }
    return metrics


def _median_throughput(run_dir: Path) -> float | None:
    """The median over epochs of ``history.jsonl``'s training samples/s (None without it)."""
    rates = [row["train/samples_per_s"] for row in read_history(run_dir)]
    rates = [rate for rate in rates if math.isfinite(rate)]
    return round(statistics.median(rates), 1) if rates else None


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)
