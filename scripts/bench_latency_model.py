"""The latency cost model against measurement: predicted fraction of time removed vs measured.

For each method (FLAP, interaction) and currency (``schedule.target=latency``: prefill at the
benchmark's grid, 1 x 512 and 8 x 128 equally weighted; ``latency_decode``: one decode step
with a KV cache after a 32-token prompt, 64 steps) at each ratio, a normal prunelab job prunes
SmolLM2-135M with ``benchmark=speed``, which times the pruned and the dense model interleaved
(10 paired repeats after 2 warm-ups) and records the speed-up with its 95% bootstrap interval.
The predicted fraction of each shape is the job's ``pruning.details.achieved_by_shape`` (the
cost model of schedules/targets.py); the measured one is ``1 - 1 / speed-up`` with the
interval mapped the same way. The table also carries, per shape, the profile's split of the
dense model's time (blocks, embedding + norm + LM head, overhead) so a miss can be traced.

Run it on an otherwise idle machine, with the latency profiles measured there too (delete
``<cache dir>/latency`` first when they were measured under load):

    .venv/bin/python scripts/bench_latency_model.py                  # ~40 min on 2 CPU cores
    .venv/bin/python scripts/bench_latency_model.py --methods flap --ratios 0.2 0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from prunelab import pipeline
from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"latency": ["1x512", "8x128"], "latency_decode": ["decode"]}
GOAL = 0.03  # |predicted - measured| the cost model should stay within


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["flap", "interaction"])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_latency_model")
    args = parser.parse_args()
    configure_logging()
    common = ["model=smollm2_135m", "benchmark=speed", "logger=none"]
    rows = []
    for target in args.targets:
        for method in args.methods:
            for ratio in args.ratios:
                job = args.out / f"{method}-{target}-{ratio}"
                results = pipeline.run(compose_job(
                    [*common, f"method={method}", f"schedule.target={target}",
                     f"schedule.ratio={ratio}"], job))
                rows += compare(method, target, ratio, results)
    table = render(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_latency_model.md").write_text(table + "\n")
    (args.out / "bench_latency_model.json").write_text(json.dumps({"rows": rows}, indent=1))


def measured_fraction(speedup: dict[str, float]) -> tuple[float, float, float]:
    """Fraction of time removed, with its interval, from a speed-up ``t_dense / t_pruned``."""
    return tuple(1 - 1 / speedup[key] for key in ("ratio", "low", "high"))


def compare(method: str, target: str, ratio: float, results: Any) -> list[dict[str, Any]]:
    """One row per timed shape of the job's currency: predicted vs measured fraction."""
    details = results.pruning.details
    speed = dataclasses.asdict(results.metrics.speed)
    profile = details["latency_profiles"][target]
    rows = []
    for shape in TARGETS[target]:
        timing = speed["decode"] if shape == "decode" else speed["prefill"][shape]
        profiled = next(iter(profile)) if shape == "decode" else shape  # "decode 32+64"
        split = profile[profiled]
        measured, low, high = measured_fraction(timing["speedup"])
        predicted = details["achieved_by_shape"][f"{target}/{profiled}"]
        rows.append({"method": method, "target": target, "ratio": ratio, "shape": shape,
                     "predicted": predicted, "measured": measured, "low": low, "high": high,
                     "error": predicted - measured,
                     "dense_ms": 1000 * split["model_s"],
                     "fixed_share": split["fixed_s"] / split["model_s"],
                     "head_share": split["head_s"] / split["model_s"],
                     "params": results.parameters.after.total})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | target | ratio | shape | predicted | measured (95% CI) | error | "
             f"within {GOAL} | dense ms | fixed share (head) |", "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['target']} | {r['ratio']:.1f} | {r['shape']} | "
            f"{r['predicted']:.3f} | {r['measured']:.3f} ({r['low']:.3f}-{r['high']:.3f}) | "
            f"{r['error']:+.3f} | {'yes' if abs(r['error']) <= GOAL else 'no'} | "
            f"{r['dense_ms']:.1f} | {r['fixed_share']:.3f} ({r['head_share']:.3f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
