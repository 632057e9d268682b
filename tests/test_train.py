"""``python train.py`` end to end: outputs, W&B offline records, bad input, and learning."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.error import URLError

import pytest
import torchvision.datasets.mnist

from attention_lab.errors import ConfigError, DataNotFoundError
from attention_lab.run.records import METRICS_FILE, read_history
from attention_lab.run.training import train
from tests.conftest import ComposeFn, run_train_py
from tests.wandb_records import read_offline_run


@pytest.mark.parametrize("attention", ["scratch", "torch"])
def test_train_py_logs_to_wandb_offline(tmp_path: Path, tiny_mnist: Path, attention: str) -> None:
    run_dir = tmp_path / "run"
    result = run_train_py(
        "debug=smoke",
        "data.val_size=56",
        f"model.attention={attention}",
        f"hydra.run.dir={run_dir}",
        data_dir=tiny_mnist,
        home=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("W&B logs offline") == 1
    assert f"Outputs: {run_dir}" in output

    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    assert metrics["attention"] == attention and metrics["params"] > 0
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    logged = read_offline_run(offline_run)
    assert logged["config"]["model"]["attention"] == attention
    assert logged["config"]["model/params"] == metrics["params"]
    assert logged["config"]["seed"] == 0
    history_keys = set().union(*logged["history"])
    assert {"train/loss_step", "val/loss", "val/acc", "test/acc"} <= history_keys
    assert logged["summary"]["test/acc"] == pytest.approx(metrics["test"]["test/acc"])


def test_bad_setting_exits_with_one_clear_message(tmp_path: Path, tiny_mnist: Path) -> None:
    result = run_train_py(
        "model.attention=flash",
        f"hydra.run.dir={tmp_path / 'run'}",
        data_dir=tiny_mnist,
        home=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "model.attention='flash' is not a known attention kind" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.attention=flash"], "model.attention='flash' is not a known attention kind"),
        (["model.n_heads=3"], "model.d_model=64 is not divisible by n_heads=3"),
        (["model.tokens=patches", "model.patch_size=5"], "model.patch_size=5 does not divide"),
        (["trainer.precision=64-fake"], "trainer.precision=64-fake is not known"),
        (["data.val_size=1000"], "data.val_size=1000 leaves no training images"),
    ],
)
def test_bad_settings_are_reported_before_training(
    compose_config: ComposeFn, tiny_mnist: Path, overrides: list[str], message: str
) -> None:
    cfg = compose_config(*overrides, "logger=none", data_dir=tiny_mnist)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_missing_data_offline_stops_before_training(
    compose_config: ComposeFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", no_network)
    cfg = compose_config("logger=none", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match=r"data\.data_dir"):
        train(cfg)


def test_csv_logger_and_checkpoints(compose_config: ComposeFn, tiny_mnist: Path) -> None:
    cfg = compose_config(
        "logger=csv",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "data.val_size=56",
        data_dir=tiny_mnist,
    )
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert metrics["epochs"] == 2 and metrics["steps"] == 4  # 200 images, batches of 128
    assert Path(metrics["best_checkpoint"]).is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "val/acc", "val/acc_best", "test/acc", "lr-AdamW/pg1"} <= set(header)
    rows = read_history(run_dir)
    assert [row["epoch"] for row in rows] == [0, 1]
    assert {"train/loss", "train/acc", "val/acc", "val/loss"} <= rows[1].keys()
    assert rows[1]["train/samples_per_s"] > 0
    assert metrics["train_samples_per_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["scratch", "torch"])
def test_the_model_learns(compose_config: ComposeFn, learnable_mnist: Path, attention: str) -> None:
    cfg = compose_config(
        f"model.attention={attention}",
        "model.d_model=32",
        "model.n_layers=2",
        "model.d_ff=64",
        "data.batch_size=64",
        "data.val_size=256",
        "trainer.max_epochs=10",
        "task.optimizer.lr=3e-3",
        "logger=none",
        data_dir=learnable_mnist,
    )
    metrics = train(cfg)
    # Ten classes: chance is 10%.
    assert metrics["test"]["test/acc"] > 0.9, metrics
