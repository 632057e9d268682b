"""Checkpoint averaging (``callbacks.average_last_epochs.epochs=N``): validation, the saved
checkpoints and the test see the mean of the last N epochs' weights; training goes on from its
own weights, also after a resume; a run without validation (``data.val_size=0``) averages too;
0 leaves a run unchanged; a negative N is one error."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf, open_dict

from attention_lab.callbacks.averaging import TRAINING_WEIGHTS, AverageLastEpochs
from attention_lab.cli.evaluate import evaluate
from attention_lab.errors import ConfigError, TrainingInterrupted
from attention_lab.run.checkpoints import LAST_CHECKPOINT
from attention_lab.run.training import train
from tests.test_reliability import DETERMINISTIC, _config, _config_recording_batches

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


def test_a_run_without_validation_tests_and_saves_the_mean(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    overrides = (*AVERAGED, "data.val_size=0")
    metrics = _run(tmp_path, tiny_mnist, *overrides)
    assert metrics["best_checkpoint"] is None  # nothing to choose by: the final model is tested
    epochs = [_weights(tmp_path, epoch) for epoch in (1, 2)]
    mean = {name: (epochs[0][name] + epochs[1][name]) / 2 for name in epochs[1]}
    last = tmp_path / "checkpoints" / LAST_CHECKPOINT
    _assert_close_weights(_checkpoint(last)["state_dict"], mean)
    _assert_close_weights(_checkpoint(last)[TRAINING_WEIGHTS], epochs[1])
    # The record's test figure is the mean's: evaluating the saved mean gives it again.
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(_config(tmp_path, tiny_mnist, *overrides), tmp_path / ".hydra" / "config.yaml")
    tested = evaluate(last, split="test")["test"]
    assert tested["test/loss"] == pytest.approx(metrics["test"]["test/loss"], rel=1e-5)


def test_a_run_without_validation_stopped_and_resumed_tests_the_same_mean(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    overrides = (*AVERAGED, "data.val_size=0")
    unbroken = train(_config(tmp_path / "unbroken", tiny_mnist, *overrides))
    per_epoch = unbroken["steps"] // 3
    stopped = tmp_path / "stopped"
    # SIGTERM as the last batch of epoch 1 (the first averaged one) starts.
    cfg = _config_recording_batches(stopped, tiny_mnist, *overrides, stop_at=(1, per_epoch - 1))
    with pytest.raises(TrainingInterrupted):
        train(cfg)
    resumed = train(_config(stopped, tiny_mnist, *overrides, "ckpt_path=last"))
    assert resumed["test"] == unbroken["test"]
    # Resumed again, the finished run has no epoch left to train: it tests the mean once more.
    again = train(_config(stopped, tiny_mnist, *overrides, "ckpt_path=last"))
    assert again["test"] == unbroken["test"]


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

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("test/w", self.w.detach())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1.0)


def _climb(
    folder: Path,
    *,
    stop_after: int | None = None,
    resume: bool = False,
    epochs: int = 3,
    validate: bool = True,
    test: list[float] | None = None,
) -> list[float]:
    """Fit ``Climb`` (one step an epoch) for 5 epochs, the last ``epochs`` averaged, saving
    ``folder/last.ckpt`` every epoch; ``stop_after`` an epoch, or ``resume`` from last.ckpt;
    ``validate=False``: no validation data. Returns the ``val/w`` of each epoch validated in
    this fit, and appends to ``test`` the ``test/w`` of the final weights tested after it."""
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
    model = Climb()
    trainer.fit(model, data, data if validate else None, ckpt_path=ckpt_path, weights_only=True)
    if test is not None:
        test.append(float(trainer.test(model, data, verbose=False)[0]["test/w"]))
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


def test_the_fit_ends_on_the_mean_which_a_test_of_the_final_weights_sees(tmp_path: Path) -> None:
    tested: list[float] = []
    assert _climb(tmp_path, test=tested) == [1.0, 2.0, 3.0, 3.5, 4.0]
    assert tested == [4.0]


def test_without_validation_each_epoch_joins_the_mean_as_it_ends(tmp_path: Path) -> None:
    # No validation split (data.val_size=0): no validation hook runs, no best checkpoint is
    # chosen, and the final weights are tested.
    tested: list[float] = []
    assert _climb(tmp_path, validate=False, test=tested) == []
    assert tested == [4.0]  # (3 + 4 + 5) / 3, not the last epoch's 5
    checkpoint = _checkpoint(tmp_path / "last.ckpt")
    assert float(checkpoint["state_dict"]["w"]) == 4.0
    assert float(checkpoint[TRAINING_WEIGHTS]["w"]) == 5.0


def test_without_validation_a_resumed_fit_keeps_the_sum(tmp_path: Path) -> None:
    _climb(tmp_path, validate=False, stop_after=3)  # epochs 2 and 3 joined: 3 + 4
    tested: list[float] = []
    _climb(tmp_path, validate=False, resume=True, test=tested)
    assert tested == [4.0]
    assert float(_checkpoint(tmp_path / "last.ckpt")[TRAINING_WEIGHTS]["w"]) == 5.0


def test_zero_epochs_averages_nothing(tmp_path: Path) -> None:
    assert _climb(tmp_path, epochs=0) == [1.0, 2.0, 3.0, 4.0, 5.0]
    checkpoint = _checkpoint(tmp_path / "last.ckpt")
    assert float(checkpoint["state_dict"]["w"]) == 5.0 and TRAINING_WEIGHTS not in checkpoint


def test_negative_epochs_is_one_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"callbacks.average_last_epochs.epochs=-1 must be 0"):
        AverageLastEpochs(epochs=-1)
