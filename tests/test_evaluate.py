"""The evaluate command tests a trained checkpoint and gets the figures the run itself got."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from attention_lab.cli.evaluate import evaluate, main
from attention_lab.errors import ConfigError
from attention_lab.run.training import train
from tests.conftest import ComposeFn


@pytest.fixture
def trained(compose_config: ComposeFn, tiny_mnist: Path) -> tuple[dict, Path]:
    """A two-batch run with checkpoints: its metrics, and its config saved as a run keeps it."""
    cfg = compose_config("debug=smoke", "logger=none", "data.val_size=56", data_dir=tiny_mnist)
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return metrics, run_dir


def test_evaluate_reproduces_the_runs_test(trained: tuple[dict, Path]) -> None:
    metrics, run_dir = trained
    best = Path(metrics["best_checkpoint"])
    assert best.parent == run_dir / "checkpoints"
    evaluated = evaluate(best)
    assert evaluated["test"] == metrics["test"]  # the same checkpoint, data and test loop
    written = json.loads((run_dir / f"evaluate-{best.stem}" / "metrics.json").read_text())
    assert written["test"] == metrics["test"]
    assert written["checkpoint"] == str(best.resolve())
    assert written["provenance"]["versions"]["torch"]


def test_evaluate_command_takes_overrides_and_names_bad_settings(
    trained: tuple[dict, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    metrics, run_dir = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    assert main([f"ckpt={ckpt}", f"out={out}", "data.eval_batch_size=16"]) == 0
    written = json.loads((out / "metrics.json").read_text())
    assert set(written["test"]) == set(metrics["test"])
    assert main([f"ckpt={tmp_path / 'missing.ckpt'}"]) == 2
    assert "ckpt=" in capsys.readouterr().err
    assert main([f"ckpt={ckpt}", "data.no_such_key=1"]) == 2
    assert "data.no_such_key" in capsys.readouterr().err


def test_evaluate_on_the_validation_split_gets_the_run_s_validation_figures(
    trained: tuple[dict, Path],
) -> None:
    metrics, run_dir = trained
    best = Path(metrics["best_checkpoint"])
    evaluated = evaluate(best, split="val")
    assert set(evaluated["val"]) == {"val/loss", "val/acc"}
    assert "test" not in evaluated
    # The best checkpoint is the one with the best val/acc the run logged: the same figure.
    assert evaluated["val"]["val/acc"] == pytest.approx(metrics["best_val"])
    written = json.loads((run_dir / f"evaluate-{best.stem}-val" / "metrics.json").read_text())
    assert written["val"] == evaluated["val"]


def test_evaluate_names_a_bad_split_and_a_run_without_validation(
    trained: tuple[dict, Path],
) -> None:
    _, run_dir = trained
    with pytest.raises(ConfigError, match=r"^split='dev' is not a split to evaluate on"):
        evaluate(run_dir / "checkpoints" / "last.ckpt", split="dev")
    with pytest.raises(ConfigError, match=r"^split=val: this run has no validation split"):
        evaluate(run_dir / "checkpoints" / "last.ckpt", ["data.val_size=0"], split="val")
