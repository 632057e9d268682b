"""Every config in conf/ composes, and every experiment runs a step on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from attention_lab.callbacks.averaging import AverageLastEpochs
from attention_lab.nn.attention import PORTABLE_KINDS
from attention_lab.run.records import NO_ATTENTION
from attention_lab.run.training import build_callbacks, build_model, train
from tests.conftest import CONF_DIR, ComposeFn, TinyDataFn, run_train_py

# Groups whose every option is composed by itself; experiment and debug are run below.
GROUPS = ["data", "model", "task", "trainer", "logger", "callbacks", "paths"]

# Options that only make sense together: composing one of them composes the whole family.
FAMILIES = [
    {"data": "multi30k", "model": "seq2seq", "task": "translation"},
    {"data": "ud_ewt", "model": "tagger", "task": "tagging"},
    {"data": "ud_ewt", "model": "bert_tagger", "task": "tagging"},
    {"data": "ud_ewt", "model": "bilstm_tagger", "task": "tagging"},
    {"data": "sst2", "model": "cnn_classifier", "task": "text_classification"},
    {"data": "sst2", "model": "text_classifier", "task": "text_classification"},
]


def _with_family(group: str, option: str) -> list[str]:
    for family in FAMILIES:
        if family.get(group) == option:
            return [f"{g}={o}" for g, o in family.items()]
    return [f"{group}={option}"]


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def _experiments() -> list[str]:
    return _options("experiment")


def _attention_of(experiment: str) -> str:
    """``scratch``, or ``none`` when the experiment's model has no ``model.attention``."""
    filed = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml")
    model = next(
        (d["override /model"] for d in filed.get("defaults", []) if "override /model" in d), None
    )
    if model is None:
        return "scratch"
    return (
        "scratch"
        if "attention" in OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml")
        else NO_ATTENTION
    )


@pytest.mark.parametrize(
    ("group", "option"), [(group, option) for group in GROUPS for option in _options(group)]
)
def test_every_option_composes(compose_config: ComposeFn, group: str, option: str) -> None:
    cfg = compose_config(*_with_family(group, option))
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.seed == 0


@pytest.mark.parametrize("debug", _options("debug"))
def test_every_debug_config_composes(compose_config: ComposeFn, debug: str) -> None:
    OmegaConf.resolve(compose_config(f"debug={debug}"))


def test_there_are_experiments() -> None:
    assert {
        "mnist_encoder",
        "multi30k_transformer",
        "ud_pos_transformer",
        "sst2_transformer",
    } <= set(_experiments())


# Every experiment runs a step with scratch attention, and one of them with every kind: the
# kinds compute the same function (tests/test_models.py, test_seq2seq.py, test_text_models.py,
# test_course.py), so running each experiment four times would add minutes to CI and no check.
# A reference model without attention (ud_pos_bilstm, sst2_cnn) runs with none.
# An experiment over a pretrained BERT (sst2_bert, *_minilm*) runs on conftest's tiny random
# BERT checkpoint instead of its real one (no network, seconds not minutes).
# Without CUDA, scratch_triton runs in Triton's interpreter (one Python pass per program of the
# kernel's grid), so its step takes batches of 2 (minutes with the experiment's own sizes).
# The variants that experiment headers and the README name run a step too.
UD_WIDTH_128 = ("model.d_model=128", "model.n_heads=4", "model.d_ff=512")
EXPERIMENT_STEPS = [
    *((e, _attention_of(e), ()) for e in _experiments()),
    *(("mnist_encoder", kind, ()) for kind in PORTABLE_KINDS if kind != "scratch"),
    ("mnist_encoder", "scratch_triton", ("data.batch_size=2", "data.eval_batch_size=2")),
    ("ud_pos_transformer", "scratch", ("model.positional=alibi", *UD_WIDTH_128)),
    ("ud_pos_transformer", "scratch", ("model.positional=alibi",)),
    (
        "ud_pos_transformer",
        "scratch",
        ("model.positional=sinusoidal", "model.chars=0", "model.word_dropout=0.0", *UD_WIDTH_128),
    ),
    ("vit_mnist", "scratch", ("model.stem=conv",)),
    ("ud_pos_bilstm", NO_ATTENTION, ("model.chars=64",)),
    ("sst2_transformer", "scratch", ("model.word_dropout=0.2",)),
    ("sst2_transformer", "scratch", ("data.tokenizer=word",)),
    ("sst2_transformer", "scratch", ("model.positional=relative", "model.dropout=0.5")),
    ("sst2_minilm_course", "scratch", ("model.pooling=mean",)),
]


@pytest.mark.parametrize(
    ("experiment", "attention", "overrides"),
    EXPERIMENT_STEPS,
    ids=[
        "-".join((experiment, attention, *overrides))
        for experiment, attention, overrides in EXPERIMENT_STEPS
    ],
)
def test_every_experiment_runs_a_step(
    compose_config: ComposeFn,
    tiny_data_for: TinyDataFn,
    experiment: str,
    attention: str,
    overrides: tuple[str, ...],
    tiny_bert_dir: Path,
) -> None:
    filed = compose_config(f"experiment={experiment}")
    data_dir, data_setting, metric, top = tiny_data_for(filed)
    if str(filed.model._target_).startswith("attention_lab.pretrained.bert"):
        overrides = (*overrides, f"model.pretrained={tiny_bert_dir}")
    if "max_extra_len" in filed.task:  # an untrained translator decodes to its length limit:
        overrides = (*overrides, "task.max_extra_len=3")  # a beam of 3 more tokens, not 50
    kind = () if attention == NO_ATTENTION else (f"model.attention={attention}",)
    cfg = compose_config(
        f"experiment={experiment}",
        *kind,
        "debug=fast_dev_run",
        "logger=csv",
        data_setting,
        *overrides,
        data_dir=data_dir,
    )
    assert cfg.experiment_name == experiment
    metrics = train(cfg)
    assert metrics["attention"] == attention
    assert 0.0 <= metrics["test"][metric] <= top


def test_multi30k_shares_its_embeddings_and_averages_its_last_epochs(
    compose_config: ComposeFn,
) -> None:
    """The experiment file's recipe builds what it says: one embedding for source, target and
    output, and the mean weights of the last 5 epochs (its step runs above)."""
    cfg = compose_config(
        "experiment=multi30k_transformer",
        "model.src_vocab_size=50",
        "model.tgt_vocab_size=50",
        "model.max_len=16",
    )
    net = build_model(cfg)
    assert net.src_embedding.weight is net.tgt_embedding.weight is net.to_logits.weight
    averaging = [c for c in build_callbacks(cfg) if isinstance(c, AverageLastEpochs)]
    assert [c.epochs for c in averaging] == [5]


def test_optuna_search_composes_over_lr_depth_and_width(compose_config: ComposeFn) -> None:
    cfg = compose_config("hparams_search=vit_optuna", "experiment=vit_mnist", with_hydra=True)
    sweeper = cfg.hydra.sweeper
    assert "OptunaSweeper" in sweeper._target_ and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"task.optimizer.lr", "model.n_layers", "model.d_model"}
    assert cfg.optimized_metric == "val/acc"
    # vit_mnist trains on all 60,000 images; a search needs validation images to choose on.
    assert cfg.data.val_size == 5000 and cfg.callbacks.model_checkpoint.monitor == "val/acc"


def test_slurm_launcher_composes(compose_config: ComposeFn) -> None:
    cfg = compose_config("hydra/launcher=slurm", with_hydra=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.slow
def test_optuna_search_runs_trials_end_to_end(tmp_path: Path, tiny_mnist: Path) -> None:
    sweep = tmp_path / "search"
    result = run_train_py(
        "hparams_search=vit_optuna",
        "experiment=vit_mnist",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "debug=smoke",
        "logger=csv",
        "data.val_size=56",
        f"hydra.sweep.dir={sweep}",
        data_dir=tiny_mnist,
        home=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert all(0.0 <= t["best_val"] <= 1.0 for t in trials)
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()
