"""Peak memory and wall time of whole prunelab jobs, each in a fresh process.

Variants (``--variants``; SmolLM2-135M unless ``--model``, FLAP at 20%, the default
benchmark):

    resident   the README's default job, weights resident (today's path)

Each job is ``python run.py ...`` in a fresh process with a cache folder of its own that
holds the converted model and this machine's latency profiles (links to the user's cache), so
calibration is computed, not read from the cache, and no GGUF conversion is timed. The figures
come from the job's results.json (``memory``): the resident set before loading (the
interpreter, torch and libraries: the baseline), each phase's peak and the process's peak,
with what the memory model predicted. A fresh ``import torch, transformers`` process is
measured too (the least any job can hold). Prints tables and writes
``<out>/bench_memory.json``.

    .venv/bin/python scripts/bench_memory.py            # ~8 min per variant on 2 CPU cores
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
VARIANTS = {
    "resident": ["method=flap", "schedule.ratio=0.2"],
}
#: The user's cache parts a job may share: converted models and per-machine latency profiles.
SHARED_CACHE = ("models", "latency", "gguf", "fingerprints.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model option")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_memory")
    args = parser.parse_args()
    user_cache = Path(os.environ.get("PRUNELAB_CACHE_DIR",
                                     Path.home() / ".cache" / "prunelab"))
    rows = [{"variant": "import torch, transformers", **_bare_baseline()}]
    for variant in args.variants:
        rows.append(_run_job(variant, args.model, args.out, user_cache))
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


def _run_job(variant: str, model: str, out: Path, user_cache: Path) -> dict:
    job_dir, cache = out / variant, out / f"cache-{variant}"
    cache.mkdir(parents=True, exist_ok=True)
    for name in SHARED_CACHE:
        link = cache / name
        if (user_cache / name).exists() and not link.exists():
            link.symlink_to((user_cache / name).resolve())
    command = [sys.executable, str(ROOT / "run.py"), f"model={model}", *VARIANTS[variant],
               "logger=none", "overwrite=true", f"hydra.run.dir={job_dir}"]
    env = {**os.environ, "PRUNELAB_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    results = json.loads((job_dir / "results.json").read_text())
    memory = results["memory"]
    return {"variant": variant, "command": " ".join(command[1:]), "wall_time_s": wall,
            "ppl": {k: v["ppl"] for k, v in results["metrics"]["perplexity"].items()},
            **memory}


def _summary(rows: list[dict]) -> str:
    lines = ["| variant | wall s | process peak GB | baseline GB | peak above baseline GB |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        peak = row["process_peak_bytes"] / 1e9
        base = row.get("baseline_bytes")
        wall = f"{row['wall_time_s']:.0f}" if "wall_time_s" in row else "-"
        above = f"{peak - base / 1e9:.3f}" if base else "-"
        lines.append(f"| {row['variant']} | {wall} | {peak:.3f} | "
                     f"{base / 1e9 if base else 0:.3f} | {above} |")
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
