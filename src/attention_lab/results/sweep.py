"""Sweep reports: a table and plots comparing run directories (``python -m
attention_lab.cli.report RUN_OR_SWEEP_DIR [...] [--out DIR]``).

Reads run directories offline (no W&B needed) through ``attention_lab.run.records``: any folder
below the given ones that holds ``.hydra/config.yaml`` is a run; a run without ``metrics.json``
failed (or is still running) and is listed as such. A run's settings are read from the config
that produced its final weights (``records.load_run``); the report lists which.
Writes ``report.md`` and PNG plots: validation curves per attention kind (mean and min-max band
over seeds; the training loss for runs without validation), the final test metric with error
bars, and training throughput; with several experiments, one plot of the test metric of every
experiment and kind (an ablation sweep, one experiment name per flipped flag, reads as accuracy
per flag).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from attention_lab.run.records import Run, find_runs


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt_metric(value: float | None, metric: str, digits: int = 2) -> str:
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
            mean, std = mean_std([r.test_value for r in done])
            score = f"{fmt_metric(mean, metric)} ± {fmt_metric(std, metric)}"
            epochs = statistics.fmean(r.metrics["epochs"] for r in done)
            fit = statistics.fmean(r.metrics["fit_time_s"] for r in done)
            rates = [r.samples_per_s for r in done if r.samples_per_s is not None]
            rate = f"{statistics.fmean(rates):.0f}" if rates else "–"
            params = f"{done[0].metrics['params']:,}"
        else:
            score, epochs, fit, rate, params = "–", float("nan"), float("nan"), "–", "–"
        reported = members[0].reported
        shown = fmt_metric(reported.get("value"), metric) if reported else "–"
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
            mean, std = mean_std(values)
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
    stats = [mean_std([r.test_value for r in groups[key]]) for key in keys]
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
