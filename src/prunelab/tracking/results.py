"""results.json: written atomically, read back by tables, resume logic and W&B."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

RESULTS_FILE = "results.json"
FAILURE_FILE = "failure.json"
SCHEMA_VERSION = 1
_PACKAGES = ("prunelab", "torch", "transformers", "hydra-core", "omegaconf", "datasets",
             "wandb", "lm-eval", "accelerate", "safetensors", "gguf")


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` via a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The complete results of a job folder, or None when the job has not finished."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return results if results.get("complete") else None


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


def summary_table(results: dict[str, Any]) -> str:
    """A short Markdown table of one job's headline numbers, printed at the end of a run."""
    pruning = results["pruning"]
    rows = [("model", results["model"]["name"]), ("method", results["method"]["name"]),
            ("ratio asked / achieved",
             f"{pruning['ratio_asked']:.3f} / {pruning['ratio_achieved']:.3f}"),
            ("parameters after", f"{results['parameters']['after']['total']:,}")]
    for name, metric in results["metrics"]["perplexity"].items():
        rows.append((f"ppl {name} (seqlen {metric['seqlen']}, {metric['windows']} windows)",
                     f"{metric['ppl']:.3f}"))
    zero_shot = results["metrics"].get("zero_shot")
    if zero_shot:
        for task, metric in zero_shot["tasks"].items():
            rows.append((f"{task} {metric['metric']} ({metric['documents']} documents)",
                         f"{100 * metric['value']:.2f}"))
        rows.append((f"zero-shot average ({zero_shot['average']['convention']})",
                     f"{100 * zero_shot['average']['value']:.2f}"))
    speed = results["metrics"].get("speed")
    if speed:
        for shape, metric in speed["prefill"].items():
            rows.append((f"prefill {shape} median (tokens/s)",
                         f"{1000 * metric['median_s']:.1f} ms ({metric['tokens_per_s']:.0f})"))
        if "decode" in speed:
            rows.append((f"decode {speed['decode']['new_tokens']} tokens",
                         f"{speed['decode']['tokens_per_s']:.1f} tokens/s"))
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'field'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)
