"""Pictures of a run, saved as PNG in the job folder (and logged to W&B)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_kept_units(layers_before: list[dict], layers_after: list[dict], title: str,
                    path: Path) -> Path:
    """Bars of kept query heads, KV heads and MLP channels per block, as fractions of dense."""
    index = [record["layer"] for record in layers_after]
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.28 * len(index) + 2), 5.5), sharex=True)
    for key, label in (("num_heads", "query heads"), ("num_kv_heads", "KV heads")):
        axes[0].bar([i + (0.2 if key == "num_kv_heads" else -0.2) for i in index],
                    [a[key] / max(b[key], 1) for a, b in zip(layers_after, layers_before)],
                    width=0.4, label=label)
    axes[0].set_ylabel("kept fraction")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[0].set_title(title, fontsize=10)
    axes[1].bar(index, [a["intermediate_size"] / max(b["intermediate_size"], 1)
                        for a, b in zip(layers_after, layers_before)], color="tab:green")
    axes[1].set_ylabel("kept MLP channels")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_xlabel("block")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_module_allocation(blocks: list[dict], layers_before: list[dict], title: str,
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
        fractions = [b[removed] / max(before[total], 1) for b, before in zip(blocks,
                                                                             layers_before)]
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        ax.set_ylabel("perplexity" if column.kind == "ppl" else "accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(table.model, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
