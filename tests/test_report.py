"""The comparison report on run directories the tests create, and sweeps that survive a failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from attention_lab.results.sweep import summary_table, write_report
from attention_lab.run.records import find_runs
from tests.conftest import run_train_py


def _fake_run(
    path: Path,
    attention: str,
    seed: int,
    test_acc: float | None,
    curve: list[float] = (0.9, 0.95),
    experiment: str = "vit_mnist",
    validation: bool = True,
) -> None:
    """A run directory as training.py leaves it; ``test_acc=None`` makes a failed run."""
    (path / ".hydra").mkdir(parents=True)
    config = {
        "experiment_name": experiment,
        "seed": seed,
        "model": {"attention": attention},
        "reported": {"metric": "test/acc", "value": 0.995, "source": "a paper"},
    }
    OmegaConf.save(OmegaConf.create(config), path / ".hydra" / "config.yaml")
    if test_acc is None:
        (path / "failure.json").write_text(json.dumps({"error": "ConfigError: bad"}))
        return
    metrics = {
        "monitor": "val/acc" if validation else None,
        "params": 1234,
        "epochs": len(curve),
        "fit_time_s": 10.0,
        "test": {"test/acc": test_acc, "test/loss": 0.1},
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    metric = "val/acc" if validation else "train/loss"
    rows = [
        {"epoch": e, metric: acc, "train/samples_per_s": 100.0 + seed}
        for e, acc in enumerate(curve)
    ]
    (path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    for job, (attention, seed, acc) in enumerate(
        [("scratch", 0, 0.990), ("scratch", 1, 0.992), ("torch", 0, 0.991), ("torch", 1, None)]
    ):
        _fake_run(sweep / str(job), attention, seed, acc)
    return sweep


def test_table_has_mean_std_n_and_failures(sweep_dir: Path) -> None:
    table = summary_table(find_runs([sweep_dir]))
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    # scratch: mean 99.10%, sample std 0.14%; two runs, none failed; reported 99.50%.
    assert "99.10% ± 0.14% | 2 | 0 | 2 | 10 | 100 | 1,234 | 99.50%" in rows["scratch"]
    assert "99.10% ± 0.00% | 1 | 1 |" in rows["torch"]


def test_report_writes_markdown_and_plots(sweep_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = write_report([sweep_dir], out)
    text = report.read_text()
    assert "| vit_mnist | scratch | test/acc |" in text
    assert "ConfigError: bad" in text  # the failed run and its error are shown
    for name in ("val_curves", "test_metric", "throughput"):
        assert (out / f"vit_mnist_{name}.png").stat().st_size > 0
        assert f"vit_mnist_{name}.png" in text


def test_an_ablation_report_plots_every_experiment_and_train_loss_without_validation(
    tmp_path: Path,
) -> None:
    sweep = tmp_path / "ablation"
    for job, (experiment, acc) in enumerate(
        [("course", 0.90), ("course", 0.91), ("course-flag=false", 0.95)]
    ):
        _fake_run(sweep / str(job), "scratch", job, acc, (2.0, 1.5), experiment, validation=False)
    out = tmp_path / "out"
    text = write_report([sweep], out).read_text()
    assert "| course-flag=false | scratch | test/acc | 95.00% ± 0.00% | 1 |" in text
    for name in ("test_metric_by_experiment", "course_train_loss", "course-flag=false_train_loss"):
        assert (out / f"{name}.png").stat().st_size > 0 and f"{name}.png" in text
    assert not (out / "course_val_curves.png").exists()


def test_a_failing_job_does_not_stop_the_sweep(tmp_path: Path, tiny_mnist: Path) -> None:
    sweep = tmp_path / "multirun"
    result = run_train_py(
        "-m",
        "model.attention=flash,scratch",  # the first job fails, the second must still run
        "debug=smoke",
        "logger=csv",
        "data.val_size=56",
        f"hydra.sweep.dir={sweep}",
        data_dir=tiny_mnist,
        home=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "model.attention='flash'" in json.loads((sweep / "0" / "failure.json").read_text())["error"]
    )
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())
    assert metrics["attention"] == "scratch"
    assert (sweep / "1" / "history.jsonl").is_file()
    runs = find_runs([sweep])
    assert [r.metrics is None for r in runs] == [True, False]
