"""The cost of pruning itself: FLAP's time and memory on SmolLM2-135M against their floors.

1. FLAP at ratio 0.2 with 1024 x 128 WikiText2 calibration tokens and a fresh statistics
   cache, first thing in this fresh process (after one warm-up batch): wall time of
   calibration, scoring and surgery against one plain forward pass of the decoder blocks over
   the same tokens, run afterwards (the floor of a one-pass method; target <= 1.1x), and peak
   resident memory against weights + one block + the two calibration activation buffers
   (target <= 1.4 GB in fp32).
2. ``--profile``: torch.profiler operator tables (self CPU time) of the first ``--profile``
   calibration batches with FLAP's statistics hooks and of the same batches as a plain
   forward, grouped as in scripts/bench_speed.py, to show where the extra time goes.
3. Calibration-size study (``--sizes``, empty to skip): FLAP's kept units with 64, 128, 256,
   512 samples against 1024 (Jaccard overlap of kept heads and of kept channels), with the
   WikiText2 perplexity of each (first 128 test windows, seqlen 128).

Prints Markdown tables and writes JSON. Run it on an otherwise idle machine.

    .venv/bin/python scripts/bench_prune_cost.py                 # ~10 min on 2 CPU cores
    .venv/bin/python scripts/bench_prune_cost.py --sizes --profile 16   # cost + profile only
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_speed import self_time_by_group  # scripts/ is on sys.path when run as a script

from prunelab import pipeline
from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job
from prunelab.config.schema import validate
from prunelab.data.calibration import sample_calibration
from prunelab.data.corpora import load_corpus
from prunelab.meter import PhaseMeter, process_peak_rss_bytes
from prunelab.methods import METHODS
from prunelab.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
GB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 128, 256, 512])
    parser.add_argument("--profile", type=int, default=0, metavar="BATCHES",
                        help="profile this many calibration batches (0: no profile)")
    parser.add_argument("--reference", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_prune_cost")
    args = parser.parse_args()
    configure_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:
        shared = Path(os.environ.get("PRUNELAB_CACHE_DIR",
                                     Path.home() / ".cache" / "prunelab")) / "models"
        (Path(cache) / "models").symlink_to(shared)  # converted weights; statistics start empty
        cost = prune_cost(args.reference, cache, args.out)
        profiles = profile_calibration(args.profile, cache, args.out) if args.profile else {}
        study = size_study(args.sizes, args.reference, cache, args.out) if args.sizes else []
    tables = [render_cost(cost)]
    if profiles:
        tables.append(render_profiles(profiles, args.profile))
    if study:
        tables.append(render_study(study))
    print("\n\n".join(tables))
    (args.out / "bench_prune_cost.md").write_text("\n\n".join(tables) + "\n")
    (args.out / "bench_prune_cost.json").write_text(json.dumps(
        {"cost": cost, "profile_ms": profiles, "calibration_size": study}, indent=1))


def flap_job(nsamples: int, cache: str, out: Path):
    """FLAP's default job config with ``nsamples`` calibration windows and its samples."""
    overrides = ["model=smollm2_135m", "model.device=cpu", "method=flap", "logger=none",
                 f"calibration.nsamples={nsamples}", f"paths.cache_dir={cache}"]
    return validate(compose_job(overrides, out / "cost"))


def calibration_samples(run, tokenizer) -> torch.Tensor:
    calib = run.calibration
    corpus = load_corpus(calib.dataset, calib.split, run.paths.data_dir)
    return sample_calibration(corpus, tokenizer, calib.nsamples, calib.seqlen, calib.seed,
                              mode=calib.mode, joiner=calib.joiner)


def prune_cost(nsamples: int, cache: str, out: Path) -> dict:
    run = flap_job(nsamples, cache, out)
    loaded = load_model(run.model, run.paths.cache_dir)
    decoder = loaded.adapter.model.model  # embeddings + decoder blocks, no head
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    block = sum(p.numel() * p.element_size()
                for p in loaded.adapter.decoder_layers[0].parameters())
    warm_up = torch.zeros(run.calibration.batch_size, run.calibration.seqlen, dtype=torch.long)
    with torch.no_grad():
        decoder(input_ids=warm_up, use_cache=False)  # pages the weights in for both timings
    outcome = METHODS.get("flap")(run.method.params).prune(run, loaded)
    pruning_peak = process_peak_rss_bytes()

    loaded = load_model(run.model, run.paths.cache_dir)  # surgery released the dense blocks
    decoder = loaded.adapter.model.model
    samples = calibration_samples(run, loaded.tokenizer)
    buffers = 2 * samples.numel() * loaded.adapter.layers[0].hidden_size * 4
    meter = PhaseMeter(loaded.device)
    with torch.no_grad():
        decoder(input_ids=warm_up, use_cache=False)
        with meter.phase("forward"):
            for batch in samples.split(run.calibration.batch_size):
                decoder(input_ids=batch, use_cache=False)
    return {"nsamples": nsamples, "tokens": samples.numel(),
            "forward_s": meter.wall_time_s["forward"],
            "forward_peak_bytes": meter.peak_memory_bytes["forward"],
            "prune_s": outcome.timings_s, "prune_peak_bytes": outcome.peak_memory_bytes,
            "process_peak_bytes": pruning_peak,
            "floor_bytes": {"weights": weights, "one_block": block,
                            "activation_buffers": buffers,
                            "total": weights + block + buffers},
            "cache_hit": outcome.details["calibration"]["cache_hit"]}


def profile_calibration(batches: int, cache: str, out: Path) -> dict[str, dict[str, float]]:
    """Self CPU ms per operator group: the first calibration batches with and without hooks."""
    from torch.profiler import ProfilerActivity, profile

    from prunelab.calibration.runner import run_streaming

    run = flap_job(batches * 8, cache, out)
    loaded = load_model(run.model, run.paths.cache_dir)
    samples = calibration_samples(run, loaded.tokenizer)[:batches * run.calibration.batch_size]
    statistics = list(METHODS.get("flap").statistics)
    decoder = loaded.adapter.model.model
    tables = {}
    with torch.no_grad():
        decoder(input_ids=samples[:1], use_cache=False)  # warm-up
        for name in ("plain forward", "calibration"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                if name == "calibration":
                    run_streaming(loaded.adapter, samples, statistics,
                                  run.calibration.batch_size, loaded.device)
                else:
                    for batch in samples.split(run.calibration.batch_size):
                        decoder(input_ids=batch, use_cache=False)
            events = prof.key_averages()
            (out / f"profile_{name.replace(' ', '_')}.txt").write_text(
                events.table(sort_by="self_cpu_time_total", row_limit=30))
            tables[name] = self_time_by_group(events, PROFILE_GROUPS)
    return tables


#: Operator groups of the profile summary: the model's own work and the statistics' work.
PROFILE_GROUPS = {
    "linear": ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul", "aten::bmm"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
    "reductions (sum)": ("aten::sum",),
    "elementwise (sub, mul, abs, add, copy)": ("aten::sub", "aten::mul", "aten::abs",
                                               "aten::add", "aten::copy_", "aten::_to_copy"),
}


def render_profiles(profiles: dict[str, dict[str, float]], batches: int) -> str:
    names = list(next(iter(profiles.values())))
    lines = [f"| first {batches} calibration batches, self CPU ms | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]
    lines += [f"| {run} | " + " | ".join(f"{ms:.0f}" for ms in groups.values()) + " |"
              for run, groups in profiles.items()]
    return "\n".join(lines)


def size_study(sizes: list[int], reference: int, cache: str, out: Path) -> list[dict]:
    common = ["model=smollm2_135m", "method=flap", "logger=none", f"paths.cache_dir={cache}",
              "~benchmark.perplexity.ptb", "~benchmark.perplexity.c4",
              "benchmark.speed.grid=[]", "benchmark.speed.decode_tokens=0", "overwrite=true"]
    runs = {}
    for n in [reference, *sizes]:
        start = time.perf_counter()
        results = pipeline.run(compose_job([*common, f"calibration.nsamples={n}"],
                                           out / f"nsamples-{n}"))
        runs[n] = (results, time.perf_counter() - start)
    ref_plan = runs[reference][0].pruning.plan["layers"]
    rows = []
    for n, (results, _) in runs.items():
        plan = results.pruning.plan["layers"]
        rows.append({"nsamples": n,
                     "heads_jaccard": jaccard(plan, ref_plan, "heads"),
                     "channels_jaccard": jaccard(plan, ref_plan, "channels"),
                     "ppl_wikitext2": results.metrics.perplexity["wikitext2"].ppl,
                     "calibration_s": results.pruning.wall_time_s["calibration"]})
    return rows


def jaccard(plan: list[dict], reference: list[dict], kind: str) -> float:
    mine = {(i, u) for i, layer in enumerate(plan) for u in layer[kind]}
    ref = {(i, u) for i, layer in enumerate(reference) for u in layer[kind]}
    return len(mine & ref) / len(mine | ref)


def render_cost(cost: dict) -> str:
    prune_total = sum(v for k, v in cost["prune_s"].items() if k != "profiling")
    peak = max(cost["prune_peak_bytes"].values())
    calibration_peak = cost["prune_peak_bytes"]["calibration"]
    floor = cost["floor_bytes"]
    return "\n".join([
        f"FLAP pruning cost, {cost['nsamples']} x 128 calibration tokens "
        f"({cost['tokens']:,} tokens), fresh statistics cache (cache hit: {cost['cache_hit']})",
        "",
        "| quantity | measured | floor | ratio | target |", "|---|---|---|---|---|",
        f"| wall time (s) | {prune_total:.1f} (calibration {cost['prune_s']['calibration']:.1f}, "
        f"scoring {cost['prune_s']['scoring']:.2f}, surgery {cost['prune_s']['surgery']:.2f}) "
        f"| {cost['forward_s']:.1f} (plain forward of the blocks) "
        f"| {prune_total / cost['forward_s']:.2f} | <= 1.1 |",
        f"| peak RSS (GB) | {peak / GB:.2f} (calibration {calibration_peak / GB:.2f}, "
        f"process {cost['process_peak_bytes'] / GB:.2f}) "
        f"| {floor['total'] / GB:.2f} (weights {floor['weights'] / GB:.2f} + block "
        f"{floor['one_block'] / GB:.3f} + buffers {floor['activation_buffers'] / GB:.2f}) "
        f"| {peak / floor['total']:.2f} | <= 1.4 GB |",
    ])


def render_study(rows: list[dict]) -> str:
    lines = ["| calibration samples | kept heads Jaccard vs 1024 | kept channels Jaccard vs 1024 "
             "| WikiText2 PPL | calibration s |", "|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: r["nsamples"]):
        lines.append(f"| {row['nsamples']} | {row['heads_jaccard']:.3f} "
                     f"| {row['channels_jaccard']:.3f} | {row['ppl_wikitext2']:.2f} "
                     f"| {row['calibration_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
