"""What each job records of its environment, and its printed summary.

The record itself (its fields, versions and reader) is prunelab/record.py.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from prunelab.record import ResultsRecord

FAILURE_FILE = "failure.json"
_PACKAGES = ("prunelab", "torch", "transformers", "hydra-core", "omegaconf", "datasets",
             "wandb", "lm-eval", "accelerate", "safetensors", "gguf")


def environment() -> dict[str, Any]:
    """Package versions, git revision and machine facts recorded with every result."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "packages": versions,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def git_revision() -> str | None:
    """The commit of the prunelab checkout (``+dirty`` when modified), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty.strip() else "")


def summary_table(record: ResultsRecord) -> str:
    """A short Markdown table of one job's headline numbers, printed at the end of a run."""
    pruning, metrics = record.pruning, record.metrics
    rows = [("model", record.model.name), ("method", record.method.name),
            ("ratio asked / achieved",
             f"{pruning.ratio_asked:.3f} / {pruning.ratio_achieved:.3f}"),
            ("parameters after", f"{record.parameters.after.total:,}")]
    if pruning.removed_blocks:
        rows.append(("blocks removed", ", ".join(map(str, pruning.removed_blocks))))
    before = record.recovery.before.perplexity if record.recovery is not None else {}
    for name, ppl in metrics.perplexity.items():
        value = f"{ppl.ppl:.3f}" + (f" (before recovery {before[name].ppl:.3f})"
                                    if name in before else "")
        rows.append((f"ppl {name} (seqlen {ppl.seqlen}, {ppl.windows} windows)", value))
    if metrics.zero_shot is not None:
        for task, result in metrics.zero_shot.tasks.items():
            rows.append((f"{task} {result.metric} ({result.documents} documents)",
                         f"{100 * result.value:.2f}"))
        average = metrics.zero_shot.average
        rows.append((f"zero-shot average ({average.convention})", f"{100 * average.value:.2f}"))
    if record.recovery is not None:
        rec = record.recovery
        rows.append((f"recovery {rec.name} ({rec.train}, {rec.tokens:,} tokens)",
                     f"final loss {rec.final_loss:.4f}, {rec.tokens_per_s:.0f} tokens/s"))
    if metrics.speed is not None:
        for shape, timing in metrics.speed.prefill.items():
            rows.append((f"prefill {shape} median (tokens/s)",
                         f"{1000 * timing.median_s:.1f} ms ({timing.tokens_per_s:.0f})"))
        if metrics.speed.decode is not None:
            decode = metrics.speed.decode
            rows.append((f"decode {decode.new_tokens} tokens",
                         f"{decode.tokens_per_s:.1f} tokens/s"))
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'field'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)
