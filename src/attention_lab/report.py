"""Compare runs: ``python -m attention_lab.report RUN_OR_SWEEP_DIR [...] [--out DIR]``.

Also ``python -m attention_lab.report keep RUN_DIR [...]`` (keep a finished run's record in
``outputs/results/``) and ``python -m attention_lab.report --results [--check]`` (rewrite, or
check, README.md's results table from those records): see ``attention_lab.results``.

Reads run directories offline (no W&B needed): ``metrics.json``, ``history.jsonl`` and the
config. Any folder below the given ones that holds ``.hydra/config.yaml`` is a run; a run
without ``metrics.json`` failed (or is still running) and is listed as such. A run's settings
are read from the config that produced its final weights, which ``metrics.json`` names (the
last attempt's, ``.hydra/attempts/<time>/config.yaml``, when a resume changed settings), else
from ``.hydra/config.yaml``; the report lists which.
Writes ``report.md`` and PNG plots: validation curves per attention kind (mean and min-max band
over seeds; the training loss for runs without validation), the final test metric with error
bars, and training throughput; with several experiments, one plot of the test metric of every
experiment and kind (an ablation sweep, one experiment name per flipped flag, reads as accuracy
per flag).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from omegaconf import OmegaConf

from attention_lab.callbacks.history import read_history
from attention_lab.errors import AttentionLabError
from attention_lab.training import FAILURE_FILE, METRICS_FILE


@dataclass
class Run:
    """What the report needs of one run directory."""

    path: Path
    config: Path  # the config its settings are read from
    experiment: str
    attention: str
    seed: int | None
    metrics: dict[str, Any] | None  # None: the run failed or has not finished
    history: list[dict[str, Any]] = field(default_factory=list)
    reported: dict[str, Any] | None = None
    error: str | None = None

    @property
    def monitor(self) -> str:
        return (self.metrics or {}).get("monitor") or "val/acc"

    @property
    def test_metric(self) -> str:
        return "test/" + self.monitor.split("/", 1)[1]

    @property
    def test_value(self) -> float | None:
        return ((self.metrics or {}).get("test") or {}).get(self.test_metric)

    @property
    def samples_per_s(self) -> float | None:
        rates = [r["train/samples_per_s"] for r in self.history if "train/samples_per_s" in r]
        return statistics.median(rates) if rates else None


def find_runs(roots: list[Path]) -> list[Run]:
    """Every run directory at or below ``roots``, in path order."""
    found = []
    for root in roots:
        for config_file in sorted(root.glob("**/.hydra/config.yaml")):
            found.append(load_run(config_file.parent.parent))
    return found


def load_run(path: Path) -> Run:
    """One run directory; a missing or unreadable ``metrics.json`` marks it failed."""
    metrics_file = path / METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    config = path / ".hydra" / "config.yaml"
    if metrics is not None and metrics.get("config") and (path / metrics["config"]).is_file():
        config = path / metrics["config"]
    cfg = OmegaConf.load(config)
    failure_file = path / FAILURE_FILE
    error = json.loads(failure_file.read_text()).get("error") if failure_file.is_file() else None
    reported = cfg.get("reported")
    return Run(
        path=path,
        config=config,
        experiment=str(cfg.get("experiment_name", "default")),
        attention=str(cfg.model.get("attention", "?")),
        seed=cfg.get("seed"),
        metrics=metrics,
        history=read_history(path),
        reported=OmegaConf.to_container(reported) if reported is not None else None,
        error=error if metrics is None else None,
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(value: float | None, metric: str, digits: int = 2) -> str:
    if value is None:
        return "–"
    # Accuracies are fractions in the metrics; the table shows percent.
    return f"{100 * value:.{digits}f}%" if metric.endswith("acc") else f"{value:.{digits}f}"


def summary_table(runs: list[Run]) -> str:
    """Markdown: experiment × attention kind -> mean ± std of the test metric and the rest."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.experiment, run.attention)].append(run)
    lines = [
        "| experiment | attention | test metric | mean ± std | n | failed | epochs | "
        "fit time (s) | train samples/s | parameters | reported |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (experiment, attention), members in sorted(groups.items()):
        done = [r for r in members if r.test_value is not None]
        metric = done[0].test_metric if done else (members[0].test_metric)
        if done:
            mean, std = _mean_std([r.test_value for r in done])
            score = f"{_fmt(mean, metric)} ± {_fmt(std, metric)}"
            epochs = statistics.fmean(r.metrics["epochs"] for r in done)
            fit = statistics.fmean(r.metrics["fit_time_s"] for r in done)
            rates = [r.samples_per_s for r in done if r.samples_per_s is not None]
            rate = f"{statistics.fmean(rates):.0f}" if rates else "–"
            params = f"{done[0].metrics['params']:,}"
        else:
            score, epochs, fit, rate, params = "–", float("nan"), float("nan"), "–", "–"
        reported = members[0].reported
        shown = _fmt(reported.get("value"), metric) if reported else "–"
        lines.append(
            f"| {experiment} | {attention} | {metric} | {score} | {len(done)} | "
            f"{len(members) - len(done)} | {epochs:.0f} | {fit:.0f} | {rate} | {params} | "
            f"{shown} |"
        )
    return "\n".join(lines)


def failures(runs: list[Run]) -> str:
    """Markdown list of the runs without metrics, with their recorded error if any."""
    failed = [r for r in runs if r.metrics is None]
    if not failed:
        return "No failed runs."
    return "\n".join(
        f"- `{r.path}`: {r.error or 'no metrics.json (failed or unfinished)'}" for r in failed
    )


def configs(runs: list[Run]) -> str:
    """Markdown list: the config that produced each finished run's final weights."""
    done = [r for r in runs if r.metrics is not None]
    return "\n".join(f"- `{r.path}`: `{r.config.relative_to(r.path)}`" for r in done) or "None."


def _by_attention(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.metrics is not None:
            groups[run.attention].append(run)
    return dict(sorted(groups.items()))


def plot_curves(runs: list[Run], metric: str) -> Figure:
    """``metric`` per epoch for each attention kind: mean line and min-max band over seeds."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for attention, members in _by_attention(runs).items():
        per_epoch: dict[int, list[float]] = defaultdict(list)
        for run in members:
            for row in run.history:
                if metric in row:
                    per_epoch[row["epoch"]].append(row[metric])
        if not per_epoch:
            continue
        epochs = sorted(per_epoch)
        means = [statistics.fmean(per_epoch[e]) for e in epochs]
        ax.plot([e + 1 for e in epochs], means, marker="o", label=attention)
        ax.fill_between(
            [e + 1 for e in epochs],
            [min(per_epoch[e]) for e in epochs],
            [max(per_epoch[e]) for e in epochs],
            alpha=0.2,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend(title="attention")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_bars(runs: list[Run], values_of: str, ylabel: str) -> Figure:
    """Bars per attention kind: mean ± std of the test metric or of the throughput."""
    fig = Figure(figsize=(4, 3.5))
    ax = fig.subplots()
    names, means, stds = [], [], []
    for attention, members in _by_attention(runs).items():
        values = [getattr(r, values_of) for r in members if getattr(r, values_of) is not None]
        if values:
            mean, std = _mean_std(values)
            names.append(attention)
            means.append(mean)
            stds.append(std)
    ax.bar(names, means, yerr=stds, capsize=6, color=["tab:blue", "tab:orange"][: len(names)])
    ax.set_ylabel(ylabel)
    if values_of == "test_value" and means:
        low = min(m - s for m, s in zip(means, stds, strict=True))
        ax.set_ylim(max(0.0, low - 0.01 * abs(low) - 1e-3), None)
    fig.tight_layout()
    return fig


def plot_by_experiment(runs: list[Run]) -> Figure:
    """One horizontal bar per (experiment, attention kind): mean ± std of the test metric over
    seeds, with each experiment's reported figure as a cross."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        if run.test_value is not None:
            groups[(run.experiment, run.attention)].append(run)
    keys = sorted(groups)
    fig = Figure(figsize=(9, 1.2 + 0.4 * len(keys)))
    ax = fig.subplots()
    stats = [_mean_std([r.test_value for r in groups[key]]) for key in keys]
    positions = list(range(len(keys)))
    ax.barh(positions, [m for m, _ in stats], xerr=[s for _, s in stats], capsize=4)
    for position, key in zip(positions, keys, strict=True):
        reported = groups[key][0].reported or {}
        if reported.get("value") is not None:
            ax.plot(reported["value"], position, "kx")
    ax.set_yticks(positions, [f"{experiment} [{attention}]" for experiment, attention in keys])
    ax.invert_yaxis()
    metric = next(iter(groups.values()))[0].test_metric if groups else "test metric"
    ax.set_xlabel(f"{metric}, mean ± std over seeds (x: reported)")
    if stats:
        low = min(m - s for m, s in stats)
        ax.set_xlim(max(0.0, low - 0.02), None)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def write_report(roots: list[Path], out: Path) -> Path:
    """Write ``report.md`` and its PNG plots into ``out``; returns the report's path."""
    runs = find_runs(roots)
    if not runs:
        raise SystemExit(f"no run directories (with .hydra/config.yaml) below {roots}")
    out.mkdir(parents=True, exist_ok=True)
    sections = [
        "# Run report",
        f"{len(runs)} runs from {', '.join(f'`{r}`' for r in roots)}.",
        "## Test metric by experiment and attention kind",
        summary_table(runs),
        "## Failed runs",
        failures(runs),
        "## Configs of the final weights",
        configs(runs),
    ]
    by_experiment: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_experiment[run.experiment].append(run)
    for experiment, members in sorted(by_experiment.items()):
        done = [r for r in members if r.metrics is not None]
        if not done:
            continue
        curve = done[0].monitor
        has_validation = any(curve in row for run in done for row in run.history)
        plots = {
            f"{experiment}_val_curves.png"
            if has_validation
            else f"{experiment}_train_loss.png": plot_curves(
                done, curve if has_validation else "train/loss"
            ),
            f"{experiment}_test_metric.png": plot_bars(done, "test_value", done[0].test_metric),
            f"{experiment}_throughput.png": plot_bars(done, "samples_per_s", "train samples/s"),
        }
        sections.append(f"## {experiment}")
        for name, figure in plots.items():
            figure.savefig(out / name, dpi=100)
            sections.append(f"![{name}]({name})")
    if len({run.experiment for run in runs if run.test_value is not None}) > 1:
        name = "test_metric_by_experiment.png"
        plot_by_experiment(runs).savefig(out / name, dpi=100)
        sections[6:6] = ["## Test metric of every experiment", f"![{name}]({name})"]
    report = out / "report.md"
    report.write_text("\n\n".join(sections) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: a report on run directories, ``keep``, or ``--results``."""
    # results.py builds on this module; imported here so that neither import needs the other.
    from attention_lab import results

    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["keep"]:
            keeper = argparse.ArgumentParser(
                prog="python -m attention_lab.report keep",
                description="Copy finished runs' records into outputs/results/<experiment>/.",
            )
            keeper.add_argument("runs", nargs="+", type=Path, help="finished run directories")
            keeper.add_argument("--results-dir", type=Path, default=results.RESULTS_DIR)
            keeper.add_argument("--name", help="record name (one run only)")
            args = keeper.parse_args(argv[1:])
            if args.name and len(args.runs) > 1:
                keeper.error("--name names one record: give one run directory")
            for run in args.runs:
                print(f"Kept: {results.keep(run, args.results_dir, args.name)}")
            return 0
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("dirs", nargs="*", type=Path, help="run or sweep directories")
        parser.add_argument("--out", type=Path, help="where to write (default: the first dir)")
        parser.add_argument(
            "--results", action="store_true", help="rewrite README.md's results table"
        )
        parser.add_argument(
            "--check", action="store_true", help="with --results: fail if README disagrees"
        )
        parser.add_argument("--readme", type=Path, default=Path("README.md"))
        parser.add_argument("--results-dir", type=Path, default=results.RESULTS_DIR)
        args = parser.parse_args(argv)
        if args.results:
            conf_dir = args.readme.parent / "conf"
            if args.check:
                if results.readme_agrees(args.readme, args.results_dir, conf_dir):
                    print(f"{args.readme}: the results table agrees with {args.results_dir}")
                    return 0
                print(
                    f"{args.readme}: the results table disagrees with {args.results_dir}; "
                    f"run python -m attention_lab.report --results",
                    file=sys.stderr,
                )
                return 1
            changed = results.update_readme(args.readme, args.results_dir, conf_dir)
            print(f"{args.readme}: results table {'rewritten' if changed else 'unchanged'}")
            return 0
        if not args.dirs:
            parser.error("give run or sweep directories, or --results")
        report = write_report(args.dirs, args.out or args.dirs[0])
    except AttentionLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
