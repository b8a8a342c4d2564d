"""The cost of pruning itself: FLAP's time and memory on SmolLM2-135M against their floors.

1. FLAP at ratio 0.2 with 1024 x 128 WikiText2 calibration tokens and a fresh statistics
   cache, in this fresh process: wall time of calibration, scoring and surgery against one
   plain forward pass of the decoder blocks over the same tokens (the floor of a one-pass
   method; target <= 1.1x), and peak resident memory against weights + one block + the two
   calibration activation buffers (target <= 1.4 GB in fp32).
2. Calibration-size study: FLAP's kept units with 64, 128, 256, 512 samples against 1024
   (Jaccard overlap of kept heads and of kept channels), with the WikiText2 perplexity of each
   (first 128 test windows, seqlen 128).

Prints Markdown tables and writes JSON. Run it on an otherwise idle machine.

    .venv/bin/python scripts/bench_prune_cost.py                 # ~10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from prunelab import pipeline
from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job
from prunelab.config.schema import validate
from prunelab.data.calibration import sample_calibration
from prunelab.data.corpora import load_corpus
from prunelab.methods import METHODS
from prunelab.models.loading import load_model
from prunelab.tracking.meter import PhaseMeter, process_peak_rss_bytes

ROOT = Path(__file__).resolve().parents[1]
GB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
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
        study = size_study(args.sizes, args.reference, cache, args.out)
    tables = render_cost(cost) + "\n\n" + render_study(study)
    print(tables)
    (args.out / "bench_prune_cost.md").write_text(tables + "\n")
    (args.out / "bench_prune_cost.json").write_text(json.dumps(
        {"cost": cost, "calibration_size": study}, indent=1))


def prune_cost(nsamples: int, cache: str, out: Path) -> dict:
    overrides = ["model=smollm2_135m", "model.device=cpu", "method=flap", "logger=none",
                 f"calibration.nsamples={nsamples}", f"paths.cache_dir={cache}"]
    run = validate(compose_job(overrides, out / "cost"))
    loaded = load_model(run.model, run.paths.cache_dir)
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    block = sum(p.numel() * p.element_size()
                for p in loaded.adapter.decoder_layers[0].parameters())
    calib = run.calibration
    corpus = load_corpus(calib.dataset, calib.split, run.paths.data_dir)
    samples = sample_calibration(corpus, loaded.tokenizer, calib.nsamples, calib.seqlen,
                                 calib.seed, mode=calib.mode, joiner=calib.joiner)
    buffers = 2 * samples.numel() * loaded.adapter.layers[0].hidden_size * 4

    meter = PhaseMeter(loaded.device)
    with meter.phase("forward"), torch.no_grad():
        for batch in samples.split(calib.batch_size):  # embeddings + decoder blocks, no head
            loaded.adapter.model.model(input_ids=batch, use_cache=False)
    outcome = METHODS.get("flap")(run.method.params).prune(run, loaded)
    return {"nsamples": nsamples, "tokens": samples.numel(),
            "forward_s": meter.wall_time_s["forward"],
            "forward_peak_bytes": meter.peak_memory_bytes["forward"],
            "prune_s": outcome.timings_s, "prune_peak_bytes": outcome.peak_memory_bytes,
            "process_peak_bytes": process_peak_rss_bytes(),
            "floor_bytes": {"weights": weights, "one_block": block,
                            "activation_buffers": buffers,
                            "total": weights + block + buffers},
            "cache_hit": outcome.details["calibration"]["cache_hit"]}


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
    ref_plan = runs[reference][0]["pruning"]["plan"]["layers"]
    rows = []
    for n, (results, _) in runs.items():
        plan = results["pruning"]["plan"]["layers"]
        rows.append({"nsamples": n,
                     "heads_jaccard": jaccard(plan, ref_plan, "heads"),
                     "channels_jaccard": jaccard(plan, ref_plan, "channels"),
                     "ppl_wikitext2": results["metrics"]["perplexity"]["wikitext2"]["ppl"],
                     "calibration_s": results["pruning"]["wall_time_s"]["calibration"]})
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
