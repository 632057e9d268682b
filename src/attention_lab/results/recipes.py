"""A record's recipe stated against today's experiment file, and the check that it still is.

The README gives every figure a command: the experiment file, the settings the run changed from
it, the attention kind and the seeds. That command is only true while the experiment file keeps
the defaults the run was made with. When an experiment file takes a better recipe, the records
made before say what they ran in today's terms in a ``recipe.yaml`` beside their
``metrics.json``::

    # what this run ran, stated against the experiment file as it is now (its defaults changed)
    overrides: [model.positional=sinusoidal, model.chars=0, model.word_dropout=0.0]

It replaces the recipe read from the run's own command (``.hydra/overrides.yaml``); the attention
kind and seed still come from there, and the files the run wrote are left as they were. A record
whose command restated what are now the defaults says ``overrides: []`` and joins the headline.

``stale_records`` composes every record's README command with the configs of today and compares
the result with the config the record ran, setting by setting (the settings both have; paths and
logging aside): a default changed without restating the records made before it is found here,
by ``python -m attention_lab.cli.report --results --check`` and by ``tests/test_results.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attention_lab.errors import ConfigError

RECIPE_FILE = "recipe.yaml"

# Settings that say where a run reads, writes and logs, how it shows progress, or which random
# stream it draws from: not the recipe.
WHEREABOUTS = (
    "paths.",
    "hydra.",
    "logger.",
    "ckpt_path",
    "callbacks.attention_maps.output_dir",
    "callbacks.history.output_dir",
    "data.data_dir",
    "data.tokenizer_dir",
    "data.num_workers",
    "trainer.enable_progress_bar",
    # Which random stream orders the batches (both draw a fresh shuffle every epoch from the
    # seed): MNIST records made before data.shuffle=seeded existed ran PyTorch's shuffle.
    "data.shuffle",
)


# Settings that choose among validated epochs: in a run without validation (data.val_size=0)
# they choose nothing, and the run tests its final weights, which its newest checkpoint holds
# too (tests/test_results.py runs both ways).
WITHOUT_VALIDATION = ("callbacks.model_checkpoint.monitor",)


def read_recipe(run_dir: Path) -> list[str] | None:
    """The overrides of ``run_dir/recipe.yaml``, or None when the record has none."""
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    overrides = OmegaConf.to_container(OmegaConf.load(path)).get("overrides")
    if not isinstance(overrides, list) or not all(
        isinstance(o, str) and "=" in o for o in overrides
    ):
        raise ConfigError(f"{path}: overrides must be a list of key=value settings")
    return [str(o) for o in overrides]


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def differences(ran: dict, composed: dict, plain: dict) -> list[tuple[str, Any, Any]]:
    """``(setting, ran, composed now)`` for each setting the command now makes otherwise than
    the run had it. A setting added since the run (absent from ``ran``) is taken to have been
    added as its group file's default (``plain``: the command's config groups without the
    experiment file), which new settings keep to the old behaviour: the command must leave it
    there."""
    now, then, before = dict(_leaves(composed)), dict(_leaves(ran)), dict(_leaves(plain))
    unvalidated = now.get("data.val_size") == 0 and then.get("data.val_size") == 0
    found = []
    for key, value in now.items():
        expected = then[key] if key in then else before.get(key, value)
        if value == expected or key.startswith(WHEREABOUTS):
            continue
        if not (unvalidated and key in WITHOUT_VALIDATION):
            found.append((key, expected, value))
    return found


def _compose(overrides: tuple[str, ...]) -> tuple[dict, dict]:
    """The config ``overrides`` compose, and the plain config of the same config groups."""
    composed = compose("train", list(overrides), return_hydra_config=True)
    choices = OmegaConf.to_container(composed.hydra.runtime.choices)
    groups = [
        f"{group}={choice}"
        for group, choice in choices.items()
        if choice is not None and "/" not in group and group in composed
    ]
    made = OmegaConf.to_container(composed)
    del made["hydra"]
    return made, OmegaConf.to_container(compose("train", groups))


def stale_records(commands: list[tuple[Path, list[str]]], conf_dir: Path) -> list[str]:
    """For each ``(run_dir, overrides of its README command)``, compose the overrides with
    ``conf_dir`` as it is now; a line for each record whose config differs from the one it ran
    (empty when every command still makes its run). Interpolations are compared unresolved, so
    the seed, which the command takes from the record, is the one setting left aside."""
    problems = []
    # The seed aside, the records of a row share one command: composed once.
    composed: dict[tuple[str, ...], tuple[dict, dict]] = {}
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        for run_dir, overrides in commands:
            unseeded = tuple(o for o in overrides if not o.startswith("seed="))
            if unseeded not in composed:
                composed[unseeded] = _compose(unseeded)
            ran = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra/config.yaml"))
            found = [d for d in differences(ran, *composed[unseeded]) if d[0] != "seed"]
            if found:
                shown = ", ".join(f"{k}: ran {a!r}, now {b!r}" for k, a, b in found[:5])
                problems.append(
                    f"{run_dir}: `{' '.join(overrides)}` no longer makes this run ({shown}); "
                    f"restate what it ran in {run_dir / RECIPE_FILE}"
                )
    return problems
