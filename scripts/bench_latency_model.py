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
``<cache dir>/latency`` first when they were measured under load). ``--sweep`` reads the jobs
of a finished sweep instead (any suite that times the dense reference, e.g.
experiment=interaction_pareto), so the Pareto jobs serve as the check:

    .venv/bin/python scripts/bench_latency_model.py                  # ~40 min on 2 CPU cores
    .venv/bin/python scripts/bench_latency_model.py --methods flap --ratios 0.2 0.5
    .venv/bin/python scripts/bench_latency_model.py \
        --sweep outputs/experiments/interaction_pareto/smollm2_135m-interaction_pareto
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prunelab import pipeline
from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job
from prunelab.record import ResultsRecord

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
    parser.add_argument("--sweep", type=Path, help="read the jobs of this finished sweep")
    args = parser.parse_args()
    configure_logging()
    rows = []
    for (method, target, ratio), results in jobs(args):
        rows += compare(method, target, ratio, results)
    rows.sort(key=lambda r: (r["target"], r["method"], r["setting"], r["ratio"], r["shape"]))
    table = render(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_latency_model.md").write_text(table + "\n")
    (args.out / "bench_latency_model.json").write_text(json.dumps({"rows": rows}, indent=1))


def jobs(args: argparse.Namespace) -> Iterator[tuple[tuple[str, str, float], ResultsRecord]]:
    """(method, target, ratio) and results of each job: run here, or read from ``--sweep``."""
    if args.sweep is not None:
        for path in sorted(args.sweep.glob("*/results.json")):
            record = ResultsRecord.from_dict(json.loads(path.read_text()), str(path))
            schedule = record.config["schedule"]
            key = (record.config["method"]["name"], schedule["target"], schedule["ratio"])
            if key[0] in args.methods and key[1] in args.targets and key[2] in args.ratios:
                yield key, record
        return
    common = ["model=smollm2_135m", "benchmark=speed", "logger=none"]
    for target in args.targets:
        for method in args.methods:
            for ratio in args.ratios:
                job = args.out / f"{method}-{target}-{ratio}"
                yield (method, target, ratio), pipeline.run(compose_job(
                    [*common, f"method={method}", f"schedule.target={target}",
                     f"schedule.ratio={ratio}"], job))


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
        rows.append({"method": method, "setting": setting(results.config), "target": target,
                     "ratio": ratio, "shape": shape,
                     "predicted": predicted, "measured": measured, "low": low, "high": high,
                     "error": predicted - measured,
                     "dense_ms": 1000 * split["model_s"],
                     "fixed_share": split["fixed_s"] / split["model_s"],
                     "head_share": split["head_s"] / split["model_s"],
                     "params": results.parameters.after.total})
    return rows


def setting(config: dict[str, Any]) -> str:
    """The dynamic schedule's tuned knobs, where the job has them (interaction)."""
    schedule, method = config["schedule"], config["method"]
    if "temperature" not in schedule:
        return ""
    return (f"T={schedule['temperature']:.3g} thr={schedule['threshold']:.3g} "
            f"{method.get('estimator', '')}").strip()


def render(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | setting | target | ratio | shape | predicted | measured (95% CI) | "
             f"error | within {GOAL} | dense ms | fixed share (head) |", "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['target']} | {r['ratio']:.1f} | {r['shape']} | "
            f"{r['predicted']:.3f} | {r['measured']:.3f} ({r['low']:.3f}-{r['high']:.3f}) | "
            f"{r['error']:+.3f} | {'yes' if abs(r['error']) <= GOAL else 'no'} | "
            f"{r['dense_ms']:.1f} | {r['fixed_share']:.3f} ({r['head_share']:.3f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
