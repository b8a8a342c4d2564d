"""Pictures of a run, saved as PNG in the job folder (and logged to W&B)."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

from prunelab.atomic import atomic_file
from prunelab.record import LayerSizes

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

AXIS_LABELS = {"ppl": "perplexity", "accuracy": "accuracy (%)",
               "latency": "prefill latency (ms)", "throughput": "decode tokens/s",
               "speedup": "speed-up over dense (x)"}


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG and free it (figures are only ever written, never shown)."""
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def _legend_below(fig, ax) -> None:
    """One legend under the panels: long sweep labels beside them squeeze the panels thin."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=2 if len(labels) > 4 else 1)


def plot_kept_units(layers_before: list[LayerSizes], layers_after: list[LayerSizes],
                    title: str, path: Path) -> Path:
    """Bars of kept query heads, KV heads and MLP channels per block, as fractions of dense."""
    index = [record.layer for record in layers_after]
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.28 * len(index) + 2), 5.5), sharex=True)
    for key, label in (("num_heads", "query heads"), ("num_kv_heads", "KV heads")):
        axes[0].bar([i + (0.2 if key == "num_kv_heads" else -0.2) for i in index],
                    [getattr(a, key) / max(getattr(b, key), 1)
                     for a, b in zip(layers_after, layers_before)],
                    width=0.4, label=label)
    axes[0].set_ylabel("kept fraction")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[0].set_title(title, fontsize=10)
    axes[1].bar(index, [a.intermediate_size / max(b.intermediate_size, 1)
                        for a, b in zip(layers_after, layers_before)], color="tab:green")
    axes[1].set_ylabel("kept MLP channels")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_xlabel("block")
    return _save(fig, path)


def plot_module_allocation(blocks: list[dict], layers_before: list[LayerSizes], title: str,
                           path: Path) -> Path:
    """Module scores per block (log scale) over the fraction of each sub-layer removed.

    ``blocks`` is a method's ``details["blocks"]`` with module scores; wholly removed
    sub-layers are hatched.
    """
    index = [b["layer"] for b in blocks]
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.28 * len(index) + 2), 5.5), sharex=True)
    sizes = {"attention": ("removed_heads", "num_heads"),
             "mlp": ("removed_channels", "intermediate_size")}
    for offset, (module, color) in ((-0.2, ("attention", "tab:blue")),
                                    (0.2, ("mlp", "tab:green"))):
        scores = [max(b[f"{module}_score"], 1e-12) for b in blocks]
        axes[0].bar([i + offset for i in index], scores, width=0.4, color=color, label=module)
        removed, total = sizes[module]
        fractions = [b[removed] / max(getattr(before, total), 1)
                     for b, before in zip(blocks, layers_before)]
        hatches = ["//" if b[f"{module}_removed"] else "" for b in blocks]
        for i, fraction, hatch in zip(index, fractions, hatches):
            axes[1].bar(i + offset, fraction, width=0.4, color=color, hatch=hatch,
                        edgecolor="black" if hatch else color)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("module score")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_title(title, fontsize=10)
    axes[1].set_ylabel("fraction removed (hatched: whole)")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_xlabel("block")
    return _save(fig, path)


def running_mean(values: list[float], width: int) -> list[float]:
    """Mean of each value and the ``width - 1`` before it (fewer at the start)."""
    sums = [0.0, *itertools.accumulate(values)]
    return [(sums[i + 1] - sums[max(0, i + 1 - width)]) / min(width, i + 1)
            for i in range(len(values))]


def plot_loss_curve(losses: list[float], title: str, path: Path) -> Path:
    """Training loss per optimizer step, with a running mean over a tenth of the steps."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="step")
    width = max(1, len(losses) // 10)
    ax.plot(steps, running_mean(losses, width), lw=1.6, label=f"mean of {width}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_metric_vs_ratio(table, path: Path) -> Path:
    """One panel per column: the metric against the pruning ratio, one line per method row.

    Perplexities on a log scale, accuracies in %; dense values are dashed lines. ``table`` is
    a ``tables.ResultTable``.
    """
    columns = table.columns
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    lines: dict[str, list] = {}
    for row in table.rows:
        if row.ratio > 0:
            lines.setdefault(row.label, []).append(row)
    for ax, column in zip(axes[0], columns):
        for row in table.rows:
            if row.ratio == 0 and row.values.get(column.key) is not None:
                ax.axhline(row.values[column.key], color="black", linestyle="--", linewidth=1,
                           label=row.label)
        for label, rows in lines.items():
            points = [(r.ratio, r.values[column.key]) for r in rows
                      if r.values.get(column.key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        if column.kind == "ppl":
            ax.set_yscale("log")
        ax.set_title(column.label)
        ax.set_xlabel("pruning ratio")
        ax.set_ylabel(AXIS_LABELS[column.kind])
    _legend_below(fig, axes[0][-1])
    fig.suptitle(table.model, fontsize=10)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]], lower_is_better: bool
                 ) -> list[tuple[float, float]]:
    """The points no other point beats in both latency (x, lower) and quality (y)."""
    front, best = [], None
    for x, y in sorted(points, key=lambda p: (p[0], p[1] if lower_is_better else -p[1])):
        if best is None or (y < best if lower_is_better else y > best):
            front.append((x, y))
            best = y
    return front


def plot_pareto(table, path: Path) -> Path | None:
    """Quality against measured speed, one series per method, the Pareto front.

    Panels: the first perplexity (log scale) and the zero-shot average when present. x is
    the first prefill shape's median latency; when the jobs timed their dense model beside
    them (``benchmark.speed.reference=dense``), x is the latency relative to dense (one over
    the speed-up) with its confidence interval as error bars, dense at 1. Returns None when
    the table has no speed column.
    """
    speedup = next((c for c in table.columns if c.kind == "speedup"), None)
    latency = speedup or next((c for c in table.columns if c.kind == "latency"), None)
    quality = [c for c in table.columns if c.kind == "ppl"][:1]
    quality += [c for c in table.columns if c.key == "zero_shot/average"]
    if latency is None or not quality:
        return None
    fig, axes = plt.subplots(1, len(quality), figsize=(5 * len(quality), 4), squeeze=False)
    for ax, column in zip(axes[0], quality):
        everything = []
        series: dict[str, list[tuple[float, float, float, float]]] = {}
        for row in table.rows:
            x, y = _speed_position(row, latency), row.values.get(column.key)
            if x is None or y is None:
                continue
            series.setdefault(row.label, []).append((*x, y))
            everything.append((x[0], y))
        for label, points in series.items():
            points.sort()
            xs, lows, highs, ys = zip(*points)
            ax.errorbar(xs, ys, xerr=[[x - lo for x, lo in zip(xs, lows)],
                                      [hi - x for x, hi in zip(xs, highs)]],
                        marker="*" if label == "dense" else "o",
                        linestyle="-" if len(points) > 1 else "none", capsize=2, label=label)
        front = pareto_front(everything, lower_is_better=column.kind == "ppl")
        if front:
            ax.step(*zip(*front), where="post", color="black", linewidth=0.8, alpha=0.6,
                    label="Pareto front")
        if column.kind == "ppl":
            ax.set_yscale("log")
        ax.set_xlabel(f"{latency.key.split('/', 1)[1].replace('_', ' ')} latency relative to "
                      "dense\n(bars: confidence interval)" if speedup
                      else f"measured {latency.label}")
        ax.set_ylabel(f"{column.label} {AXIS_LABELS[column.kind]}")
    _legend_below(fig, axes[0][-1])
    fig.suptitle(table.model, fontsize=10)
    return _save(fig, path)


def _speed_position(row, column) -> tuple[float, float, float] | None:
    """x, its lower and upper bound: a latency (no interval), or one over the speed-up."""
    value = row.values.get(column.key)
    if column.kind != "speedup":
        return None if value is None else (value, value, value)
    if value is None:
        return (1.0, 1.0, 1.0) if row.ratio == 0 else None  # dense is its own reference
    return 1 / value, 1 / row.values[f"{column.key}/high"], 1 / row.values[f"{column.key}/low"]
