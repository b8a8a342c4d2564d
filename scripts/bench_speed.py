"""Measured inference speed-up of pruned models against the speed-up their MACs allow.

Dense, then FLAP, Wanda-sp and Mag-sp at ratios 0.2 and 0.5 (each pruned by a normal prunelab
job with ``benchmark=speed``): prefill latency at 1 x 512 and 8 x 128 and greedy decode
throughput (64 tokens after a 32-token prompt), median of 7 runs after 2 warm-ups. For every
shape: measured speed-up over dense, the MAC-ratio speed-up (dense MACs per token / pruned MACs
per token: the limit) and the efficiency ``measured / MAC-ratio`` (target >= 0.9 for prefill).
Prints a Markdown table and writes JSON. Run it on an otherwise idle machine. ``--profile``
also saves each model and writes, per model, the torch.profiler operator table of one 1 x 512
prefill (``<out>/<job>/profile_1x512.txt``) and a summary of where the time goes.

    .venv/bin/python scripts/bench_speed.py                         # ~10 min on 2 CPU cores
    .venv/bin/python scripts/bench_speed.py --profile
    .venv/bin/python scripts/bench_speed.py --model gemma3_270m --methods flap

The model is SmolLM2-135M unless ``--model`` names another ``conf/model`` option.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model option")
    parser.add_argument("--out", type=Path,
                        help="output folder (default: outputs/bench_speed, or "
                             "outputs/bench_speed-<model> for another model)")
    parser.add_argument("--profile", action="store_true",
                        help="save the models and profile one 1 x 512 prefill of each")
    args = parser.parse_args()
    configure_logging()
    if args.out is None:
        suffix = "" if args.model == "smollm2_135m" else f"-{args.model}"
        args.out = ROOT / "outputs" / f"bench_speed{suffix}"
    common = [f"model={args.model}", "benchmark=speed", "logger=none", "overwrite=true",
              f"save_model={str(args.profile).lower()}"]
    jobs = [("dense", 0.0, ["method=dense"])]
    jobs += [(m, r, [f"method={m}", f"schedule.ratio={r}"]) for r in args.ratios
             for m in args.methods]
    rows = []
    for method, ratio, overrides in jobs:
        results = pipeline.run(compose_job([*common, *overrides],
                                           args.out / f"{method}-{ratio}"))
        rows.append({"method": method, "ratio": ratio,
                     "params": results.parameters.after.total,
                     "speed": dataclasses.asdict(results.metrics.speed)})
    summary = [compare(row, rows[0]) for row in rows]
    table = render(summary)
    if args.profile:
        profiles = {f"{m}-{r}": profile_prefill(args.out / f"{m}-{r}") for m, r, _ in jobs}
        table += "\n\n" + render_profiles(profiles)
        for row in summary:
            row["profile_ms"] = profiles[f"{row['method']}-{row['ratio']}"]
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_speed.md").write_text(table + "\n")
    (args.out / "bench_speed.json").write_text(json.dumps(
        {"rows": summary, "settings": rows[0]["speed"]["settings"]}, indent=1))


#: operator name prefixes -> the part of the forward pass they are
OPERATOR_GROUPS = {"linear": ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul"),
                   "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product",
                                 "aten::bmm", "aten::baddbmm", "aten::softmax"),
                   "gqa gather": ("aten::index_select", "aten::repeat_interleave",
                                  "aten::expand", "aten::clone", "aten::contiguous")}


def profile_prefill(job_dir: Path, batch: int = 1, seqlen: int = 512) -> dict[str, float]:
    """Self CPU milliseconds per operator group of one prefill of the saved model."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job_dir / "model", dtype=torch.float32).eval()
    ids = torch.randint(model.config.vocab_size, (batch, seqlen),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(input_ids=ids, use_cache=False)
    events = prof.key_averages()
    (job_dir / f"profile_{batch}x{seqlen}.txt").write_text(
        events.table(sort_by="self_cpu_time_total", row_limit=25))
    return self_time_by_group(events, OPERATOR_GROUPS)


def self_time_by_group(events, operator_groups: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """Self CPU ms of torch.profiler ``events`` summed per group of operator-name prefixes."""
    groups = {name: 0.0 for name in [*operator_groups, "other"]}
    for event in events:
        group = next((g for g, prefixes in operator_groups.items()
                      if event.key.startswith(prefixes)), "other")
        groups[group] += event.self_cpu_time_total / 1000
    groups["total"] = sum(groups.values())
    return groups


def render_profiles(profiles: dict[str, dict[str, float]]) -> str:
    names = list(next(iter(profiles.values())))
    lines = ["| model (1 x 512 prefill, self CPU ms) | " + " | ".join(names) + " |",
             "|" + "---|" * (len(names) + 1)]
    lines += [f"| {job} | " + " | ".join(f"{ms[n]:.0f}" for n in names) + " |"
              for job, ms in profiles.items()]
    return "\n".join(lines)


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
