"""Peak memory and wall time of whole prunelab jobs, each in a fresh process.

Variants (``--variants``; SmolLM2-135M unless ``--model``, FLAP at 20%, the default
benchmark):

    resident            the README's default job, weights resident (today's path)
    streamed            memory=streamed: blocks read from disk while they run, the pruned model
                        written block by block, then loaded whole for evaluation and speed
    streamed-layerwise  memory=streamed memory.evaluation=layerwise, no speed part: the
                        pruned model is evaluated block by block too
    capped              streamed-layerwise inside a memory cgroup of ``--cap-gb`` (default
                        0.9 GB: below SmolLM2's 0.54 GB of fp32 weights plus the ~0.45 GB the
                        process holds before loading); needs write access to the cgroup tree

Each job is ``python run.py ...`` in a fresh process with a cache folder of its own that
holds the converted model and this machine's latency profiles (links to the user's cache), so
calibration is computed, not read from the cache, and no GGUF conversion is timed. The figures
come from the job's results.json (``memory``): the resident set before loading (the
interpreter, torch and libraries: the baseline), each phase's peak and the process's peak,
with what the memory model predicted; a capped job also reports the cgroup's own peak and
how often it hit the limit. A fresh ``import torch, transformers`` process is measured too
(the least any job can hold). Prints tables and writes ``<out>/bench_memory.json``.

    .venv/bin/python scripts/bench_memory.py            # ~8 min per variant on 2 CPU cores
    .venv/bin/python scripts/bench_memory.py --variants capped --cap-gb 0.9
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAP = ["method=flap", "schedule.ratio=0.2"]
LAYERWISE = [*FLAP, "memory=streamed", "memory.evaluation=layerwise", "~benchmark.speed"]
VARIANTS = {
    "resident": FLAP,
    "streamed": [*FLAP, "memory=streamed"],
    "streamed-layerwise": LAYERWISE,
    "capped": LAYERWISE,
}
#: The user's cache parts a job may share: converted models and per-machine latency profiles.
SHARED_CACHE = ("models", "latency", "gguf", "fingerprints.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model option")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_memory")
    parser.add_argument("--cap-gb", type=float, default=0.9,
                        help="the memory cgroup limit of the capped variant")
    args = parser.parse_args()
    user_cache = Path(os.environ.get("PRUNELAB_CACHE_DIR",
                                     Path.home() / ".cache" / "prunelab"))
    rows = [{"variant": "import torch, transformers", **_bare_baseline()}]
    for variant in args.variants:
        cap = int(args.cap_gb * 1e9) if variant == "capped" else None
        rows.append(_run_job(variant, args.model, args.out, user_cache, cap))
    print(_summary(rows))
    for row in rows[1:]:
        print(f"\n{row['variant']}: peak per phase (GB)\n{_phases(row)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_memory.json").write_text(json.dumps(
        {"model": args.model, "rows": rows}, indent=1))
    print(f"\nwritten: {args.out / 'bench_memory.json'}")


def _bare_baseline() -> dict:
    code = ("import re, torch, transformers\n"
            "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    rss = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                             text=True).stdout.split()[-1]) * 1024
    return {"process_peak_bytes": rss}


def _run_job(variant: str, model: str, out: Path, user_cache: Path, cap: int | None) -> dict:
    job_dir, cache = out / variant, out / f"cache-{variant}"
    cache.mkdir(parents=True, exist_ok=True)
    for name in SHARED_CACHE:
        link = cache / name
        if (user_cache / name).exists() and not link.exists():
            link.symlink_to((user_cache / name).resolve())
    command = [sys.executable, str(ROOT / "run.py"), f"model={model}", *VARIANTS[variant],
               "logger=none", "overwrite=true", f"hydra.run.dir={job_dir}"]
    env = {**os.environ, "PRUNELAB_CACHE_DIR": str(cache)}
    group = _MemoryCgroup(cap) if cap else None
    start = time.perf_counter()
    try:
        subprocess.run(command, check=True, env=env, cwd=ROOT,
                       preexec_fn=group.enter if group else None)
    finally:
        capped = group.close() if group else {}
    wall = time.perf_counter() - start
    results = json.loads((job_dir / "results.json").read_text())
    return {"variant": variant, "command": " ".join(command[1:]), "wall_time_s": wall,
            "parts_s": results["evaluation"]["parts_s"],
            "pruning_s": results["pruning"]["wall_time_s"]["total"],
            "plan": results["pruning"]["plan"],
            "ppl": {k: v["ppl"] for k, v in results["metrics"]["perplexity"].items()},
            **capped, **results["memory"]}


class _MemoryCgroup:
    """A memory cgroup (v2 ``memory.max``, or v1 ``memory.limit_in_bytes``) for one job."""

    def __init__(self, limit: int):
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        root = Path("/sys/fs/cgroup") if v2.is_file() else Path("/sys/fs/cgroup/memory")
        self.path = root / f"prunelab-bench-{os.getpid()}"
        self.v2 = v2.is_file()
        try:
            self.path.mkdir()
            limit_file = "memory.max" if self.v2 else "memory.limit_in_bytes"
            (self.path / limit_file).write_text(str(limit))
        except OSError as err:
            raise SystemExit(f"Cannot create a memory cgroup under {root} ({err}): the capped "
                             "variant needs write access to the cgroup tree (root in a "
                             "container, or a delegated cgroup).") from err
        self.limit = limit

    def enter(self) -> None:
        """Runs in the child before exec: move it into the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def close(self) -> dict:
        peak_file = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        events = "memory.events" if self.v2 else "memory.failcnt"
        peak = (self.path / peak_file).read_text().strip()
        hits = (self.path / events).read_text().strip()
        self.path.rmdir()
        return {"cgroup_limit_bytes": self.limit, "cgroup_peak_bytes": int(peak),
                "cgroup_limit_hits": hits}


def _summary(rows: list[dict]) -> str:
    lines = ["| variant | wall s | process peak GB | baseline GB | peak above baseline GB |"
             " cgroup limit / peak GB |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        peak = row["process_peak_bytes"] / 1e9
        base = row.get("baseline_bytes")
        wall = f"{row['wall_time_s']:.0f}" if "wall_time_s" in row else "-"
        above = f"{peak - base / 1e9:.3f}" if base else "-"
        cgroup = (f"{row['cgroup_limit_bytes'] / 1e9:.3f} / {row['cgroup_peak_bytes'] / 1e9:.3f}"
                  if "cgroup_limit_bytes" in row else "-")
        lines.append(f"| {row['variant']} | {wall} | {peak:.3f} | "
                     f"{base / 1e9 if base else 0:.3f} | {above} | {cgroup} |")
    return "\n".join(lines)


def _phases(row: dict) -> str:
    lines = ["| phase | predicted | measured |", "|---|---:|---:|"]
    for phase, measured in row["measured_bytes"].items():
        predicted = row["predicted_host_bytes"].get(phase)
        shown = f"{predicted / 1e9:.3f}" if predicted is not None else "-"
        lines.append(f"| {phase} | {shown} | {measured / 1e9:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
