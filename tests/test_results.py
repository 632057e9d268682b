"""Run records and the README's results table generated from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attention_lab.cli.report import main as report_main
from attention_lab.errors import ConfigError
from attention_lab.results.recipes import RECIPE_FILE, differences, read_recipe
from attention_lab.results.table import (
    BEGIN,
    END,
    keep,
    load_records,
    readme_agrees,
    results_table,
    stale,
    update_readme,
    variants_table,
)
from attention_lab.run.training import train
from tests.conftest import CONF_DIR, REPO_ROOT
from tests.test_averaging import AVERAGED
from tests.test_reliability import _config
from tests.test_report import _fake_run


def test_the_readme_table_is_the_one_the_records_give() -> None:
    """Fails when README.md's results block and outputs/results/ disagree: regenerate with
    python -m attention_lab.cli.report --results."""
    assert readme_agrees(REPO_ROOT / "README.md", REPO_ROOT / "outputs" / "results", CONF_DIR)


def _run(
    path: Path,
    attention: str,
    seed: int,
    acc: float,
    overrides: list[str],
    provenance: dict | None = None,
) -> Path:
    _fake_run(path, attention, seed, acc)
    OmegaConf.save(OmegaConf.create(overrides), path / ".hydra" / "overrides.yaml")
    if provenance is not None:
        metrics = json.loads((path / "metrics.json").read_text())
        (path / "metrics.json").write_text(json.dumps(metrics | {"provenance": provenance}))
    return path


@pytest.fixture
def records(tmp_path: Path) -> Path:
    """Three vit_mnist runs kept as records: scratch seeds 0 and 1, and one 30-epoch torch run."""
    results = tmp_path / "results"
    base = ["experiment=vit_mnist", "logger=csv"]
    runs = [
        ("scratch", 0, 0.9953, [*base, "seed=0"]),
        ("scratch", 1, 0.9948, [*base, "seed=1", "model.attention=scratch"]),
        ("torch", 0, 0.9947, [*base, "trainer.max_epochs=30", "model.attention=torch"]),
    ]
    for i, (attention, seed, acc, overrides) in enumerate(runs):
        keep(_run(tmp_path / "runs" / str(i), attention, seed, acc, overrides), results)
    return results


def test_keep_copies_the_record_and_nothing_else(tmp_path: Path) -> None:
    run = _run(tmp_path / "2026-01-01" / "10-00-00", "scratch", 3, 0.99, ["seed=3"])
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    kept = keep(run, tmp_path / "results")
    assert kept == tmp_path / "results" / "vit_mnist" / "scratch-seed3-2026-01-01-10-00-00"
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert files == [".hydra/config.yaml", ".hydra/overrides.yaml", "history.jsonl", "metrics.json"]
    with pytest.raises(ConfigError, match="exists already"):
        keep(run, tmp_path / "results")


def test_kept_records_name_their_checkpoint_relative_to_the_run(tmp_path: Path) -> None:
    """A run that wrote an absolute path (as metrics.json did before) is kept with the path
    relative to its run directory; nothing else in metrics.json changes."""
    run = _run(tmp_path / "2026-01-01" / "10-00-00", "scratch", 3, 0.99, ["seed=3"])
    written = json.loads((run / "metrics.json").read_text())
    absolute = str((run / "checkpoints" / "epoch007.ckpt").resolve())
    (run / "metrics.json").write_text(json.dumps(written | {"best_checkpoint": absolute}))
    kept = json.loads((keep(run, tmp_path / "results") / "metrics.json").read_text())
    assert kept == written | {"best_checkpoint": "checkpoints/epoch007.ckpt"}


def test_keep_refuses_an_unfinished_run(tmp_path: Path) -> None:
    _fake_run(tmp_path / "failed", "torch", 0, None)
    with pytest.raises(ConfigError, match="not a finished run"):
        keep(tmp_path / "failed", tmp_path / "results")


def test_table_rows_per_experiment_and_kind(records: Path) -> None:
    table = results_table(load_records(records), ["default", "vit_mnist"])
    rows = [line for line in table.splitlines() if line.startswith("| vit_mnist")]
    # scratch: mean 99.505%, sample std 0.0354%; reported 99.50%; the seeds form the command.
    # The 30-epoch torch run changed the recipe: it is a variant, not a row of this table.
    assert len(rows) == 1
    assert "| vit_mnist | scratch | test/acc | 99.50% ± 0.04% | 2 | 99.50% | 2 |" in rows[0]
    assert "`python train.py -m experiment=vit_mnist model.attention=scratch seed=0,1`" in rows[0]
    assert "No run record yet: `default`" in table


def test_a_gpu_run_is_its_own_row_with_trainer_gpu_in_its_command(tmp_path: Path) -> None:
    results = tmp_path / "results"
    base = ["experiment=vit_mnist", "model.attention=scratch"]
    keep(_run(tmp_path / "cpu", "scratch", 0, 0.99, [*base, "seed=0"]), results)
    gpu_host = {"machine": {"cpu": "Xeon", "gpus": ["NVIDIA H100 80GB HBM3"]}}
    for seed, acc in ((0, 0.97), (1, 0.98)):
        overrides = [*base, "trainer=gpu"]
        keep(_run(tmp_path / f"gpu{seed}", "scratch", seed, acc, overrides, gpu_host), results)
    # A run that chose the CPU on a GPU host trained on the CPU: it joins the CPU row.
    overrides = [*base, "seed=1", "trainer=cpu"]
    run = _run(tmp_path / "cpu1", "scratch", 1, 0.97, overrides, gpu_host)
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    config.trainer = {"accelerator": "cpu", "devices": 1}
    OmegaConf.save(config, run / ".hydra" / "config.yaml")
    keep(run, results)
    rows = results_table(load_records(results)).splitlines()[2:]
    # Not averaged together, and trainer=gpu is where it ran, not a change of recipe.
    assert len(rows) == 2 and variants_table(load_records(results)) == ""
    cpu, gpu = sorted(rows, key=lambda row: "H100" in row)
    assert "| 98.00% ± 1.41% | 2 |" in cpu and "| Xeon |" in cpu
    assert "`python train.py -m experiment=vit_mnist model" in cpu
    assert "| 97.50% ± 0.71% | 2 |" in gpu and "| 1× NVIDIA H100 80GB HBM3 |" in gpu
    assert "`python train.py -m experiment=vit_mnist trainer=gpu model.attention=scratch" in gpu


def test_a_run_finished_from_a_checkpoint_says_its_fit_time_is_the_last_part(
    tmp_path: Path,
) -> None:
    # overrides.yaml keeps the first command; the resuming one is in the provenance's argv.
    resumed = {"argv": ["train.py", "experiment=vit_mnist", "ckpt_path=last"]}
    run = _run(tmp_path / "run", "torch", 0, 0.99, ["experiment=vit_mnist", "seed=0"], resumed)
    keep(run, tmp_path / "results")
    (row,) = results_table(load_records(tmp_path / "results")).splitlines()[2:]
    assert "| 10 s (resumed: last part) |" in row


def test_a_variant_is_set_beside_its_experiment_seed_by_seed(tmp_path: Path) -> None:
    results = tmp_path / "results"
    filed = ["experiment=vit_mnist_course", "logger=csv"]
    flipped = [*filed, "model.row_strip_patches=false", "experiment_name=vit-row_strip_off"]
    rerun = "vit_mnist_course-rerun"
    runs = [  # (attention, seed, acc, overrides, experiment_name)
        ("scratch", 0, 0.90, filed, "vit_mnist_course"),
        ("scratch", 1, 0.92, filed, "vit_mnist_course"),
        ("scratch", 2, 0.80, filed, "vit_mnist_course"),
        ("scratch", 0, 0.95, flipped, "vit-row_strip_off"),
        ("scratch", 1, 0.96, flipped, "vit-row_strip_off"),
        ("torch", 0, 0.93, flipped, "vit-row_strip_off"),  # no torch record as filed
        # The filed recipe rerun under a name of its own: its own row, no variant's baseline.
        ("scratch", 0, 0.50, [*filed, f"experiment_name={rerun}"], rerun),
    ]
    for i, (attention, seed, acc, overrides, name) in enumerate(runs):
        path = tmp_path / "runs" / str(i)
        _fake_run(path, attention, seed, acc, experiment=name)
        OmegaConf.save(
            OmegaConf.create([*overrides, f"seed={seed}"]), path / ".hydra/overrides.yaml"
        )
        keep(path, results)
    records = load_records(results)
    main_rows = results_table(records).splitlines()[2:]
    assert [row.split(" | ")[:2] for row in main_rows] == [
        ["| vit_mnist_course", "scratch"],
        [f"| {rerun}", "scratch"],
    ]
    variants = variants_table(records).splitlines()[2:]
    assert len(variants) == 2
    # Paired with seeds 0 and 1 only (seed 2 has no variant): +5 and +4 points.
    assert variants[0].startswith(
        "| vit_mnist_course | model.row_strip_patches=false | scratch | test/acc "
        "| 95.50% ± 0.71% | 2 | +4.50 ± 0.71 (n=2) | "
    )
    assert (
        "`python train.py -m experiment=vit_mnist_course model.row_strip_patches=false "
        "experiment_name=vit-row_strip_off model.attention=scratch seed=0,1`" in variants[0]
    )
    assert "| torch | test/acc | 93.00% | 1 | – (no record of the experiment" in variants[1]
    assert variants_table([r for r in records if not r.change]) == ""


def test_results_rewrites_only_the_block_and_check_agrees(records: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## After\ntext\n")
    args = ["--results", "--readme", str(readme), "--results-dir", str(records)]
    assert report_main([*args, "--check"]) == 1  # the old table disagrees
    assert report_main(args) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n" + BEGIN)
    assert text.endswith(END + "\n\n## After\ntext\n")
    assert "old table" not in text and "99.50% ± 0.04%" in text
    assert report_main([*args, "--check"]) == 0
    assert update_readme(readme, records) is False  # a second run changes nothing


def test_no_records_is_said_plainly(tmp_path: Path) -> None:
    assert results_table(load_records(tmp_path / "none"), []) == "No run records yet."


def test_keep_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _run(tmp_path / "d" / "t", "torch", 0, 0.98, [])
    assert report_main(["keep", str(run), "--results-dir", str(tmp_path / "r"), "--name", "x"]) == 0
    assert (tmp_path / "r" / "vit_mnist" / "x" / "metrics.json").is_file()
    assert report_main(["keep", str(tmp_path / "d"), "--results-dir", str(tmp_path / "r")]) == 2
    assert "not a finished run" in capsys.readouterr().err


def _bleu_run(path: Path, seed: int, test: dict[str, float]) -> Path:
    """A finished multi30k_transformer run with these test figures, reported in bleu_lc."""
    run = _run(path, "scratch", seed, 0.5, ["experiment=multi30k_transformer"])
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    config.experiment_name = "multi30k_transformer"
    config.reported = {"metric": "test/bleu_lc", "value": 36.5, "source": "a tutorial"}
    OmegaConf.save(config, run / ".hydra" / "config.yaml")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["monitor"] = "val/bleu" if "test/bleu" in test else "val/bleu_lc"
    metrics["test"] = test
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_a_bleu_row_is_in_the_reported_metric_with_its_signature(tmp_path: Path) -> None:
    run = _bleu_run(tmp_path / "d" / "t", 0, {"test/bleu": 38.95, "test/bleu_lc": 39.19})
    keep(run, tmp_path / "results")
    table = results_table(load_records(tmp_path / "results"))
    signature = "nrefs:1|case:lc|eff:no|tok:13a|smooth:exp"
    # Lowercased BLEU is the row's figure, the cased score beside it.
    assert f"| test/bleu_lc ({signature}) | 39.19; cased 38.95 | 1 | 36.50 |" in table


def test_the_cased_bleu_is_left_out_when_a_record_lacks_it(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for seed, test in enumerate(
        [{"test/bleu": 38.0, "test/bleu_lc": 39.0}, {"test/bleu": 40.0, "test/bleu_lc": 41.0}]
    ):
        keep(_bleu_run(tmp_path / "d" / str(seed), seed, test), results, name=f"s{seed}")
    assert "| 40.00 ± 1.41; cased 39.00 ± 1.41 | 2 |" in results_table(load_records(results))
    keep(_bleu_run(tmp_path / "d" / "2", 2, {"test/bleu_lc": 40.0}), results, name="s2")
    row = results_table(load_records(results)).splitlines()[2]
    assert "| 40.00 ± 1.00 | 3 |" in row and "cased" not in row


def test_the_command_names_the_experiment_file_not_a_renamed_run(tmp_path: Path) -> None:
    # An ablation run keeps its experiment's config but names itself apart (experiment_name=):
    # its row names the experiment file it changed, and so does its command.
    path = tmp_path / "runs" / "ablation"
    _fake_run(path, "scratch", 2, 0.949, experiment="vit_mnist_course-no_softmax")
    overrides = ["experiment=vit_mnist_course", "seed=2", "model.softmax_before_loss=false"]
    OmegaConf.save(OmegaConf.create(overrides), path / ".hydra" / "overrides.yaml")
    keep(path, tmp_path / "results")
    row = variants_table(load_records(tmp_path / "results")).splitlines()[2]
    assert row.startswith("| vit_mnist_course | model.softmax_before_loss=false | scratch |")
    assert (
        "`python train.py experiment=vit_mnist_course model.softmax_before_loss=false "
        "model.attention=scratch seed=2`" in row
    )


def test_every_record_s_command_still_makes_its_run() -> None:
    """Fails when an experiment file's defaults changed under committed records: restate what
    they ran in their recipe.yaml (attention_lab.results.recipes)."""
    assert stale(load_records(REPO_ROOT / "outputs" / "results"), CONF_DIR) == []


def _composed_run(path: Path, conf: Path, overrides: list[str], acc: float) -> Path:
    """A finished run of the default experiment whose config is ``overrides`` composed."""
    _fake_run(path, "scratch", 0, acc, experiment="default")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        OmegaConf.save(compose("train", overrides), path / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), path / ".hydra" / "overrides.yaml")
    return path


def test_a_changed_default_is_found_and_a_restated_recipe_keeps_the_record_true(
    tmp_path: Path,
) -> None:
    conf, results = tmp_path / "conf", tmp_path / "results"
    shutil.copytree(CONF_DIR, conf)
    old = _composed_run(tmp_path / "old", conf, ["seed=0"], 0.98)
    new = _composed_run(tmp_path / "new", conf, ["model.d_ff=256", "seed=0"], 0.99)
    kept_old, kept_new = keep(old, results), keep(new, results)
    assert stale(load_records(results), conf) == []

    # The experiment takes the better recipe: the old record's command no longer makes it.
    model_file = conf / "model" / "encoder_classifier.yaml"
    model_file.write_text(model_file.read_text().replace("d_ff: 128", "d_ff: 256"))
    (problem,) = stale(load_records(results), conf)
    assert str(kept_old) in problem and "model.d_ff: ran 128, now 256" in problem
    assert RECIPE_FILE in problem

    # Each record restates its recipe against today's file: the old one becomes a variant, the
    # new one (which restated what is now the default) the experiment as filed.
    (kept_old / RECIPE_FILE).write_text("overrides: [model.d_ff=128]\n")
    (kept_new / RECIPE_FILE).write_text("overrides: []\n")
    records = load_records(results)
    assert stale(records, conf) == []
    assert "`python train.py model.attention=scratch seed=0` |" in results_table(records)
    variant = variants_table(records).splitlines()[2]
    assert variant.startswith("| default | model.d_ff=128 | scratch | test/acc | 98.00% | 1 |")
    assert "| −1.00 (n=1) | `python train.py model.d_ff=128 model.attention=scratch seed=0` |" in (
        variant
    )


@pytest.mark.parametrize("text", ["overrides: model.d_ff=128\n", "overrides: [d_ff]\n"])
def test_a_recipe_file_that_is_not_a_list_of_settings_is_one_clear_error(
    tmp_path: Path, text: str
) -> None:
    (tmp_path / RECIPE_FILE).write_text(text)
    with pytest.raises(ConfigError, match="overrides must be a list of key=value settings"):
        read_recipe(tmp_path)


def test_a_setting_added_since_the_run_counts_as_its_group_default(tmp_path: Path) -> None:
    # A record from before model.pooling existed: its config has no such setting. The command
    # still makes its run while the setting keeps its group file's default (how new settings
    # keep the old behaviour), and no longer once its experiment file changes it.
    conf, results = tmp_path / "conf", tmp_path / "results"
    shutil.copytree(CONF_DIR, conf)
    run = _composed_run(tmp_path / "old", conf, ["experiment=mnist_encoder", "seed=0"], 0.99)
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    del config.model["pooling"]
    OmegaConf.save(config, run / ".hydra" / "config.yaml")
    kept = keep(run, results)
    assert stale(load_records(results), conf) == []

    experiment = conf / "experiment" / "mnist_encoder.yaml"
    experiment.write_text(experiment.read_text().replace("model:\n", "model:\n  pooling: cls\n"))
    (problem,) = stale(load_records(results), conf)
    assert str(kept) in problem and "model.pooling: ran 'mean', now 'cls'" in problem


def test_without_validation_the_monitor_is_not_part_of_the_recipe(tmp_path: Path) -> None:
    ran = {"data": {"val_size": 0}, "callbacks": {"model_checkpoint": {"monitor": "val/acc"}}}
    now = {"data": {"val_size": 0}, "callbacks": {"model_checkpoint": {"monitor": None}}}
    assert differences(ran, now, now) == []
    ran["data"]["val_size"] = now["data"]["val_size"] = 5000  # with validation it chooses
    assert differences(ran, now, now) == [("callbacks.model_checkpoint.monitor", "val/acc", None)]


def test_without_validation_both_monitors_test_the_same_weights(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    # What WITHOUT_VALIDATION stands on: no metric to monitor, the final weights (here the mean
    # of the last two epochs) are tested; with no monitor, the newest checkpoint, which holds them.
    tested = []
    for monitor in ("val/acc", "null"):
        overrides = (*AVERAGED, "data.val_size=0", f"callbacks.model_checkpoint.monitor={monitor}")
        tested.append(train(_config(tmp_path / monitor.replace("/", "_"), tiny_mnist, *overrides)))
    assert tested[0]["best_checkpoint"] is None
    assert Path(tested[1]["best_checkpoint"]).name == "epoch002.ckpt"
    assert tested[0]["test"] == tested[1]["test"]
