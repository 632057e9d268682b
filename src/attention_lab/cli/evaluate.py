"""Test a checkpoint without training:
``python -m attention_lab.cli.evaluate ckpt=PATH [key=value]``.

    python -m attention_lab.cli.evaluate ckpt=outputs/runs/DATE/TIME/checkpoints/epoch009.ckpt
    python -m attention_lab.cli.evaluate ckpt=PATH data.data_dir=/data trainer.accelerator=cpu
    python -m attention_lab.cli.evaluate ckpt=PATH split=val task.length_penalty=1.0

Builds the model, task, data and trainer from the run's own config (``.hydra/config.yaml`` of
the run directory that holds ``checkpoints/``, or ``config=FILE``), with any ``key=value``
overrides of it, and runs ``Trainer.test`` on the checkpoint: the test a run does at its end,
so the figures are the ones that run wrote. Prints and writes ``metrics.json`` (the test
metrics, the checkpoint, the provenance, and for BLEU the SacreBLEU signatures) into
``out=DIR``, by default ``<run dir>/evaluate-<checkpoint name>/``. ``split=val`` runs the same
loop over the validation split instead (figures named ``val/...``, default folder
``evaluate-<checkpoint name>-val/``): settings that are not learned, such as the beam size and
length penalty of a translation, are chosen there, never on the test set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from attention_lab.bleu import SIGNATURES
from attention_lab.errors import AttentionLabError, ConfigError
from attention_lab.run.checkpoints import check_fits, checkpoint_file, load_trained
from attention_lab.run.config import validate
from attention_lab.run.lock import run_lock
from attention_lab.run.provenance import provenance
from attention_lab.run.records import NO_ATTENTION, write_metrics
from attention_lab.run.training import (
    build_model,
    count_parameters,
    fill_model_settings_from_data,
    instantiate_setting,
)
from attention_lab.tasks.translation import TOKENIZERS_KEY

SETTINGS = ("ckpt", "config", "out", "split")
SPLITS = ("test", "val")


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``cfg`` with ``key=value`` overrides; a key the config lacks is a ``ConfigError``."""
    OmegaConf.set_struct(cfg, True)
    try:
        merged = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key or overrides}: {err.msg}") from err
    OmegaConf.set_struct(merged, False)
    return merged


def evaluate(
    ckpt: str | Path,
    overrides: list[str] | None = None,
    *,
    config: str | Path | None = None,
    out: str | Path | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Test ``ckpt`` with its run's config; returns (and writes) the metrics.

    It holds the lock (``run.lock``) of the folder it writes into: of the run directory when
    that folder lies inside it (the default), so a run still training is not written into."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not a split to evaluate on; choose test or val")
    ckpt = checkpoint_file(ckpt)  # before the lock: its run directory comes from it
    run_dir = ckpt.resolve().parent.parent
    suffix = "" if split == "test" else f"-{split}"
    out_dir = Path(out) if out else run_dir / f"evaluate-{ckpt.stem}{suffix}"
    inside = out_dir.resolve().is_relative_to(run_dir)
    with run_lock(run_dir if inside else out_dir, "out"):
        checkpoint, cfg = load_trained(ckpt, config)
        cfg = apply_overrides(cfg, overrides or [])
        return _evaluate(checkpoint, cfg, ckpt, out_dir, split)


def _evaluate(
    checkpoint: dict[str, Any], cfg: DictConfig, ckpt: Path, out_dir: Path, split: str
) -> dict:
    cfg.paths.output_dir = str(out_dir)
    cfg.ckpt_path = None  # the run's own resume setting, if any, is not ours
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate_setting(cfg.data, "data")
    datamodule.prepare_data()
    fill_model_settings_from_data(cfg, datamodule)
    net = build_model(cfg)
    task = instantiate_setting(cfg.task, "task", net=net)
    check_fits(checkpoint, task, ckpt)
    _check_tokenizers(checkpoint, datamodule, ckpt)
    del checkpoint  # Lightning reads the file again
    trainer: L.Trainer = instantiate_setting(
        cfg.trainer, "trainer", logger=False, enable_checkpointing=False
    )

    if split == "val":  # the test loop, over the validation split
        datamodule.setup("validate")
        if isinstance(datamodule.val_dataloader(), list):
            raise ConfigError("split=val: this run has no validation split (data.val_size=0)")
        datamodule.test_dataloader = datamodule.val_dataloader
    results = trainer.test(task, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    figures = {f"{split}/{k.split('/', 1)[1]}": float(v) for k, v in (results or [{}])[0].items()}
    metrics = {
        "experiment": cfg.get("experiment_name"),
        "model": cfg.model._target_,
        "attention": cfg.model.get("attention", NO_ATTENTION),
        "seed": cfg.seed,
        "params": count_parameters(net),
        "checkpoint": str(ckpt.resolve()),
        split: figures,
        "provenance": provenance(),
    }
    if any(key.endswith(("/bleu", "/bleu_lc")) for key in figures):
        metrics["bleu_signatures"] = SIGNATURES
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(out_dir, metrics)
    return metrics


def _check_tokenizers(checkpoint: dict[str, Any], datamodule: Any, ckpt: Path) -> None:
    """A translation checkpoint must be tested with the tokenizers it was trained with."""
    saved = checkpoint.get(TOKENIZERS_KEY)
    if saved is None or not hasattr(datamodule, "src_tokenizer"):
        return
    data = {"src": datamodule.src_tokenizer.to_str(), "tgt": datamodule.tgt_tokenizer.to_str()}
    if data != saved:
        raise ConfigError(
            f"ckpt={ckpt} was trained with other tokenizers than data "
            f"{datamodule.__class__.__name__} builds now; evaluate with the run's data settings "
            f"(data.vocab_size, data.tokenizer and the same training files)"
        )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``ckpt=``, ``config=``, ``out=``, ``split=`` and config overrides."""
    args = sys.argv[1:] if argv is None else argv
    settings = {}
    overrides = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            print(f"error: {arg!r} is not key=value", file=sys.stderr)
            return 2
        if key in SETTINGS:
            settings[key] = value
        else:
            overrides.append(arg)
    try:
        if "ckpt" not in settings:
            raise ConfigError("ckpt=PATH is required (a checkpoint in a run's checkpoints/)")
        split = settings.get("split", "test")
        metrics = evaluate(
            settings["ckpt"],
            overrides,
            config=settings.get("config"),
            out=settings.get("out"),
            split=split,
        )
    except AttentionLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(json.dumps(metrics[split], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
