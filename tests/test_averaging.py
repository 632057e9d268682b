"""Checkpoint averaging (``callbacks.average_last_epochs.epochs=N``): validation, the saved
checkpoints and the test see the mean of the last N epochs' weights; training goes on from its
own weights, also after a resume; 0 leaves a run unchanged; a negative N is one error."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import open_dict

from attention_lab.callbacks.averaging import TRAINING_WEIGHTS, AverageLastEpochs
from attention_lab.errors import ConfigError
from attention_lab.run.checkpoints import LAST_CHECKPOINT
from attention_lab.run.training import train
from tests.test_reliability import DETERMINISTIC, _config

AVERAGED = (*DETERMINISTIC, "callbacks.average_last_epochs.epochs=2")  # epochs 1 and 2 of 3


def _run(run_dir: Path, data_dir: Path, *overrides: str) -> dict:
    cfg = _config(run_dir, data_dir, *overrides)
    with open_dict(cfg):
        cfg.callbacks.save_weights = {
            "_target_": "tests.callbacks.SaveTrainingWeights",
            "folder": str(run_dir / "weights"),
        }
    return train(cfg)


def _weights(run_dir: Path, epoch: int) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "weights" / f"epoch{epoch}.pt", weights_only=True)


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_close_weights(ours: dict, expected: dict) -> None:
    assert ours.keys() == expected.keys()
    for name, value in ours.items():
        torch.testing.assert_close(value, expected[name], msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory: pytest.TempPathFactory, tiny_mnist: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("averaged")
    _run(run_dir, tiny_mnist, *AVERAGED, "+callbacks.model_checkpoint.save_top_k=-1")  # keep all
    return run_dir


def test_checkpoints_hold_the_mean_of_the_last_epochs_and_the_training_weights(
    averaged_run: Path,
) -> None:
    epochs = [_weights(averaged_run, epoch) for epoch in range(3)]
    mean = {name: (epochs[1][name] + epochs[2][name]) / 2 for name in epochs[2]}
    last = _checkpoint(averaged_run / "checkpoints" / LAST_CHECKPOINT)
    _assert_close_weights(last["state_dict"], mean)
    _assert_close_weights(last[TRAINING_WEIGHTS], epochs[2])
    # Epoch 1's checkpoint: its mean is epoch 1's weights alone; epoch 0's was not averaged.
    _assert_close_weights(
        _checkpoint(averaged_run / "checkpoints" / "epoch001.ckpt")["state_dict"], epochs[1]
    )
    first = _checkpoint(averaged_run / "checkpoints" / "epoch000.ckpt")
    assert TRAINING_WEIGHTS not in first
    _assert_close_weights(first["state_dict"], epochs[0])


def test_training_goes_on_from_its_own_weights(
    averaged_run: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    _run(plain, tiny_mnist, *DETERMINISTIC)
    for epoch in range(3):  # averaging changes what is evaluated, never the training path
        _assert_close_weights(_weights(averaged_run, epoch), _weights(plain, epoch))


class Climb(L.LightningModule):
    """One weight w that each training step raises by exactly 1 (SGD, lr 1, loss -w);
    validation logs w as ``val/w``, so a validated mean shows as the mean of the w's."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return -self.w

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/w", self.w.detach())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1.0)


def _climb(
    folder: Path, *, stop_after: int | None = None, resume: bool = False, epochs: int = 3
) -> list[float]:
    """Fit ``Climb`` (one step an epoch) for 5 epochs, the last ``epochs`` averaged, saving
    ``folder/last.ckpt`` every epoch; ``stop_after`` an epoch, or ``resume`` from last.ckpt.
    Returns the ``val/w`` of each epoch validated in this fit."""
    seen: list[float] = []

    class Record(L.Callback):
        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            seen.append(float(trainer.callback_metrics["val/w"]))

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            trainer.should_stop = trainer.current_epoch == stop_after

    data = torch.utils.data.DataLoader(torch.zeros(1, 1), batch_size=1)
    trainer = L.Trainer(
        max_epochs=5,
        callbacks=[
            AverageLastEpochs(epochs=epochs),
            Record(),
            ModelCheckpoint(dirpath=folder, filename="last", monitor=None),
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    ckpt_path = folder / "last.ckpt" if resume else None
    trainer.fit(Climb(), data, data, ckpt_path=ckpt_path, weights_only=True)
    return seen


def test_validation_sees_the_running_mean_and_training_its_own_weight(tmp_path: Path) -> None:
    # Training weights after epochs 0-4: 1, 2, 3, 4, 5; epochs 2, 3 and 4 are averaged.
    assert _climb(tmp_path) == [1.0, 2.0, 3.0, 3.5, 4.0]
    checkpoint = _checkpoint(tmp_path / "last.ckpt")
    assert float(checkpoint["state_dict"]["w"]) == 4.0  # what a test would load
    assert float(checkpoint[TRAINING_WEIGHTS]["w"]) == 5.0


def test_a_resumed_fit_goes_on_from_the_training_weight_and_the_sum(tmp_path: Path) -> None:
    assert _climb(tmp_path, stop_after=3) == [1.0, 2.0, 3.0, 3.5]
    # Resumed from the mean (3.5) the weight would reach 4.5 and the mean (3 + 4 + 4.5) / 3.
    assert _climb(tmp_path, resume=True) == [4.0]
    assert float(_checkpoint(tmp_path / "last.ckpt")[TRAINING_WEIGHTS]["w"]) == 5.0


def test_zero_epochs_averages_nothing(tmp_path: Path) -> None:
    assert _climb(tmp_path, epochs=0) == [1.0, 2.0, 3.0, 4.0, 5.0]
    checkpoint = _checkpoint(tmp_path / "last.ckpt")
    assert float(checkpoint["state_dict"]["w"]) == 5.0 and TRAINING_WEIGHTS not in checkpoint


def test_negative_epochs_is_one_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"callbacks.average_last_epochs.epochs=-1 must be 0"):
        AverageLastEpochs(epochs=-1)
