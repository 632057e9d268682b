"""debug=overfit memorises a few batches; debug=profile writes its report into the run dir."""

from __future__ import annotations

from pathlib import Path

from attention_lab.run.records import read_history
from attention_lab.run.training import train
from tests.conftest import ComposeFn


def test_overfit_drives_the_training_loss_near_zero(
    compose_config: ComposeFn, tiny_mnist: Path
) -> None:
    cfg = compose_config(
        "debug=overfit",
        "logger=none",
        "data.val_size=56",
        "data.batch_size=8",
        "trainer.overfit_batches=2",  # 16 images: seconds on a CPU
        data_dir=tiny_mnist,
    )
    metrics = train(cfg)
    losses = [row["train/loss"] for row in read_history(Path(cfg.paths.output_dir))]
    assert losses[0] > 1.0  # it starts as a guess among 10 classes (ln 10 = 2.3)
    assert losses[-1] < 0.01  # and stops when the 16 images are memorised
    assert metrics["epochs"] < cfg.trainer.max_epochs


def test_profile_writes_its_report(compose_config: ComposeFn, tiny_mnist: Path) -> None:
    cfg = compose_config(
        "debug=profile",
        "logger=none",
        "data.val_size=56",
        "data.batch_size=16",
        data_dir=tiny_mnist,
    )
    train(cfg)
    report = Path(cfg.paths.output_dir) / "fit-profile.txt"
    assert "run_training_epoch" in report.read_text()
