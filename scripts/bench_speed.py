"""Measured inference speed-up of pruned SmolLM2-135M against the speed-up its MACs allow.

Dense, then FLAP, Wanda-sp and Mag-sp at ratios 0.2 and 0.5 (each pruned by a normal prunelab
job with ``benchmark=speed``): prefill latency at 1 x 512 and 8 x 128 and greedy decode
throughput (64 tokens after a 32-token prompt), median of 7 runs after 2 warm-ups. For every
shape: measured speed-up over dense, the MAC-ratio speed-up (dense MACs per token / pruned MACs
per token: the limit) and the efficiency ``measured / MAC-ratio`` (target >= 0.9 for prefill).
Prints a Markdown table and writes JSON. Run it on an otherwise idle machine.

    .venv/bin/python scripts/bench_speed.py                         # ~10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunelab import pipeline
from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["flap", "wanda_sp", "mag_sp"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_speed")
    args = parser.parse_args()
    configure_logging()
    common = ["model=smollm2_135m", "benchmark=speed", "logger=none", "overwrite=true"]
    jobs = [("dense", 0.0, ["method=dense"])]
    jobs += [(m, r, [f"method={m}", f"schedule.ratio={r}"]) for r in args.ratios
             for m in args.methods]
    rows = []
    for method, ratio, overrides in jobs:
        results = pipeline.run(compose_job([*common, *overrides],
                                           args.out / f"{method}-{ratio}"))
        rows.append({"method": method, "ratio": ratio,
                     "params": results["parameters"]["after"]["total"],
                     "speed": results["metrics"]["speed"]})
    summary = [compare(row, rows[0]) for row in rows]
    table = render(summary)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_speed.md").write_text(table + "\n")
    (args.out / "bench_speed.json").write_text(json.dumps(
        {"rows": summary, "settings": rows[0]["speed"]["settings"]}, indent=1))


def compare(row: dict, dense: dict) -> dict:
    """Speed-ups over dense, their MAC-ratio limits and the efficiencies, per shape."""
    shapes = {}
    speed, base = row["speed"], dense["speed"]
    for name in [*speed["prefill"], "decode"]:
        mine = speed["decode"] if name == "decode" else speed["prefill"][name]
        ref = base["decode"] if name == "decode" else base["prefill"][name]
        measured = ref["median_s"] / mine["median_s"]
        limit = ref["macs_per_token"]["total"] / mine["macs_per_token"]["total"]
        shapes[name] = {"median_s": mine["median_s"], "spread_s": [mine["min_s"], mine["max_s"]],
                        "tokens_per_s": mine["tokens_per_s"], "speedup": measured,
                        "mac_speedup": limit, "efficiency": measured / limit,
                        "macs_per_token": mine["macs_per_token"]["total"],
                        "peak_memory_bytes": mine["peak_memory_bytes"]}
    return {"method": row["method"], "ratio": row["ratio"], "params": row["params"],
            "shapes": shapes}


def render(summary: list[dict]) -> str:
    names = list(summary[0]["shapes"])
    header = "| method | ratio | params | " + " | ".join(
        f"{n} ms (tok/s) | {n} speed-up / MAC limit | {n} eff." for n in names) + " |"
    lines = [header, "|" + "---|" * (3 + 3 * len(names))]
    for row in summary:
        cells = [row["method"], f"{row['ratio']:.1f}", f"{row['params'] / 1e6:.1f}M"]
        for n in names:
            s = row["shapes"][n]
            cells += [f"{1000 * s['median_s']:.1f} ({s['tokens_per_s']:.0f})",
                      f"{s['speedup']:.2f} / {s['mac_speedup']:.2f}", f"{s['efficiency']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
