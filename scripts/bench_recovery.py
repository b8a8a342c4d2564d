"""Training speed of recovery: the pruned model's tokens per second against the dense model's.

One process, SmolLM2-135M (embedded, offline), pruned by FLAP at each ``--ratios`` (from the
statistics cache after the first run). Four kinds of training step are timed, interleaved
repeat by repeat (dense full, dense LoRA, pruned full, pruned LoRA at each ratio), so machine
noise hits all of them alike, each with recovery's own ``training_step`` (forward,
next-token loss, backward, gradient clipping, AdamW; "full" trains every weight but the
embedding, "LoRA" the rank-8 adapters of the seven projections). Each repeat times
``--steps`` steps after one warm-up step. The floor: a pruned model trains faster per token
than the dense one.

    .venv/bin/python scripts/bench_recovery.py                       # ~8 min on 2 CPU cores
    .venv/bin/python scripts/bench_recovery.py --ratios 0.2 0.5 --repeats 5

Prints a Markdown table (median tokens/s, min-max over repeats, ratio to dense full) and
writes it with every timing as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from prunelab import pruning
from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job
from prunelab.config.schema import RecoveryConfig, validate
from prunelab.data.corpora import load_corpus
from prunelab.eval.perplexity import evaluation_windows
from prunelab.methods import PruningMethod
from prunelab.models.loading import load_model
from prunelab.recovery.trainer import make_trainable, training_step
from prunelab.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]


class Trainer:
    """One model with its optimizer, timed a few of recovery's training steps at a time."""

    def __init__(self, name: str, model: torch.nn.Module, lora: bool, params: int):
        self.name, self.params = name, params
        self.spec = RecoveryConfig(name="lora", train="lora" if lora else "full")
        self.model = make_trainable(model, self.spec).train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=self.spec.lr)
        self.times: list[float] = []

    def step(self, ids: torch.Tensor) -> None:
        training_step(self.model, None, [ids], self.spec, self.optimizer,
                      contextlib.nullcontext())

    def timed(self, batches: list[torch.Tensor]) -> None:
        self.step(batches[0])  # warm-up
        start = time.perf_counter()
        for ids in batches[1:]:
            self.step(ids)
        self.times.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_recovery")
    args = parser.parse_args()
    configure_logging()
    torch.manual_seed(0)

    def job(ratio: float):
        return validate(compose_job(["model=smollm2_135m", "method=flap", "logger=none",
                                     f"schedule.ratio={ratio}"], args.out))

    base = job(args.ratios[0])
    dense = load_model(base.model, base.paths.cache_dir)
    total = dense.adapter.total_parameter_count()
    corpus = load_corpus("c4", "train", base.paths.data_dir, documents=[0, 500])
    windows = evaluation_windows(corpus, dense.tokenizer, args.seqlen, " ", None)
    trainers = [Trainer("dense full", copy.deepcopy(dense.model), False, total),
                Trainer("dense LoRA", copy.deepcopy(dense.model), True, total)]
    for ratio in args.ratios:
        run = job(ratio)
        loaded = load_model(run.model, run.paths.cache_dir)
        method: PruningMethod = METHODS.get("flap")(run.method.params)
        pruning.prune(method, loaded, run)
        count = loaded.adapter.total_parameter_count()
        trainers += [Trainer(f"FLAP {ratio:.0%} full", copy.deepcopy(loaded.model), False, count),
                     Trainer(f"FLAP {ratio:.0%} LoRA", loaded.model, True, count)]
    tokens = args.steps * args.batch_size * args.seqlen
    for repeat in range(args.repeats):
        start = (repeat * (args.steps + 1) * args.batch_size) % (len(windows) - 64)
        batches = [windows[start + i * args.batch_size: start + (i + 1) * args.batch_size]
                   for i in range(args.steps + 1)]
        for trainer in trainers:
            trainer.timed(batches)
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    floor = tokens / statistics.median(trainers[0].times)
    rows = []
    for t in trainers:
        rates = [tokens / s for s in t.times]
        rows.append({"model": t.name, "params": t.params,
                     "trainable": sum(p.numel() for p in t.trainable),
                     "tokens_per_s": statistics.median(rates), "min": min(rates),
                     "max": max(rates), "vs_dense_full": statistics.median(rates) / floor,
                     "times_s": t.times})
    lines = [f"Training tokens/s, batch {args.batch_size} x {args.seqlen}, {args.steps} steps "
             f"per repeat, {args.repeats} repeats (median, min-max)", "",
             "| model | params | trainable | tokens/s | min-max | vs dense full |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['trainable'] / 1e6:.2f}M | "
              f"{r['tokens_per_s']:.0f} | {r['min']:.0f}-{r['max']:.0f} | "
              f"{r['vs_dense_full']:.2f}x |" for r in rows]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_recovery.md").write_text(table + "\n")
    (args.out / "bench_recovery.json").write_text(json.dumps(
        {"batch_size": args.batch_size, "seqlen": args.seqlen, "steps": args.steps,
         "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "rows": rows},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
