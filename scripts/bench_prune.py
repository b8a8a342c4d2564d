"""FLAP paper Table 2 protocol on the embedded default model (SmolLM2-135M), offline.

Dense, FLAP, Wanda-sp, Mag-sp and random at ratios 0.2 and 0.5; FLAP calibrates on
WikiText2 (offline: the validation split stands in for train), 1024 x 128 tokens by default;
perplexity at seqlen 128 on WikiText2 test, PTB test and C4 (offline: documents 500-999 of
the C4 train sample). Prints a Markdown table (params, PPL, prune time, peak memory) and
writes it as JSON. Each job is a normal prunelab job (results.json under --out).

    .venv/bin/python scripts/bench_prune.py --max-windows 128      # ~40 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunelab import pipeline
from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job
from prunelab.record import ResultsRecord

ROOT = Path(__file__).resolve().parents[1]

METHODS = ["flap", "wanda_sp", "mag_sp", "random"]
DATASETS = ["wikitext2", "ptb", "c4"]


def job(overrides: list[str], out: Path) -> ResultsRecord:
    return pipeline.run(compose_job(overrides, out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--nsamples", type=int, default=1024, help="FLAP calibration windows")
    parser.add_argument("--max-windows", type=int, default=None,
                        help="cap on evaluation windows per dataset (default: full test sets)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_prune")
    args = parser.parse_args()
    configure_logging()
    cap = "null" if args.max_windows is None else str(args.max_windows)
    common = ["model=smollm2_135m", "benchmark=default", "logger=none",
              f"benchmark.perplexity.wikitext2.max_windows={cap}",
              f"benchmark.perplexity.ptb.max_windows={cap}",
              f"benchmark.perplexity.c4.max_windows={min(args.max_windows or 256, 256)}"]
    rows = [("dense", 0.0, job([*common, "method=dense"], args.out / "dense"))]
    for ratio in args.ratios:
        for method in args.methods:
            extra = [f"method={method}", f"schedule.ratio={ratio}"]
            if method == "flap":
                extra += ["calibration=wikitext2_validation",
                          f"calibration.nsamples={args.nsamples}"]
            rows.append((method, ratio, job([*common, *extra], args.out / f"{method}-{ratio}")))
    table = render(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_prune.md").write_text(table + "\n")
    (args.out / "bench_prune.json").write_text(json.dumps([summary(m, r, res)
                                                           for m, r, res in rows], indent=1))


def summary(method: str, ratio: float, results: ResultsRecord) -> dict:
    pruning, ppl = results.pruning, results.metrics.perplexity
    return {
        "method": method, "ratio": ratio,
        "ratio_achieved": pruning.ratio_achieved,
        "params_total": results.parameters.after.total,
        "ppl": {d: ppl[d].ppl for d in DATASETS},
        "windows": {d: ppl[d].windows for d in DATASETS},
        "prune_time_s": pruning.wall_time_s,
        "peak_memory_bytes": pruning.peak_memory_bytes,
        "calibration_cache_hit": pruning.details.get("calibration", {}).get("cache_hit"),
    }


def render(rows) -> str:
    lines = ["| method | ratio | achieved | params | WikiText2 | PTB | C4 | prune s | calib s | "
             "peak MB |", "|" + "---|" * 10]
    for method, ratio, results in rows:
        s = summary(method, ratio, results)
        peak = max(s["peak_memory_bytes"].values()) / 2**20
        lines.append(
            f"| {method} | {ratio:.1f} | {s['ratio_achieved']:.3f} "
            f"| {s['params_total'] / 1e6:.1f}M "
            f"| {s['ppl']['wikitext2']:.2f} | {s['ppl']['ptb']:.2f} | {s['ppl']['c4']:.2f} "
            f"| {s['prune_time_s']['total']:.1f} | {s['prune_time_s'].get('calibration', 0):.1f} "
            f"| {peak:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
