"""Speed of pruned SmolLM2 in llama.cpp, next to the MAC limit and PyTorch's speed-up.

Dense and pruned SmolLM2-135M (embedded, offline) are exported to GGUF (``--types``, default
f32 and q4_k_m) and timed in llama.cpp on ``--threads`` threads: prefill of 1 x 512 and
8 x 128 tokens (logits for every token, as perplexity needs them and as prunelab's MAC count
prices), and ``--decode`` single-token steps after a ``--prompt``-token prompt. Every repeat
times every GGUF once per shape (interleaved), so machine noise hits all models alike;
medians over ``--repeats``. Each ``--models`` entry is ``dense`` or ``method:ratio``, pruned
with the method's default config (calibration from the cache after the first run);
``--samples`` shortens a method's calibration, by default the interaction method's to 32
windows, since its module-removal scores cost one model pass per sub-layer.

The limit is the MAC ratio of the pruned geometry (dense MACs / pruned MACs per token at the
shape's mean context, LM head included); efficiency = measured speed-up / MAC speed-up. The
PyTorch speed-up of the same models (prunelab's speed protocol, eval/speed.py) sits beside it.

    .venv/bin/python scripts/bench_llamacpp.py                      # ~25 min on 2 cores
    .venv/bin/python scripts/bench_llamacpp.py --models dense flap:0.5 --types f32 --repeats 5

Prints a Markdown table and writes it with every timing as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from prunelab import pruning
from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job
from prunelab.config.schema import SpeedSpec, validate
from prunelab.eval.speed import macs_per_token, measure_speed
from prunelab.export import export_gguf
from prunelab.export.llamacpp import require_llama_cpp
from prunelab.models.loading import load_model
from prunelab.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["dense", "flap:0.2", "flap:0.5", "wanda_sp:0.2", "wanda_sp:0.5",
                  "interaction:0.2", "interaction:0.5"]


class LlamaCppTimer:
    """One GGUF in a llama.cpp context that holds ``n_seq`` sequences of ``n_ctx`` tokens."""

    def __init__(self, path: Path, threads: int, n_ctx: int, n_seq: int):
        self.lib = lib = require_llama_cpp()
        self.model = lib.llama_model_load_from_file(str(path).encode(),
                                                    lib.llama_model_default_params())
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_ctx, n_ctx
        params.n_seq_max, params.n_threads, params.n_threads_batch = n_seq, threads, threads
        params.kv_unified = True  # one cache for all sequences: 1 x 512 and 8 x 128 both fit
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.model or not self.ctx:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.capacity = n_ctx
        self.batch = lib.llama_batch_init(n_ctx, 0, n_seq)

    def _run(self, rows: list[list[int]], start: int, all_logits: bool) -> float:
        """Seconds for one llama_decode of ``rows`` (one sequence each) at position ``start``."""
        batch, k = self.batch, 0
        for seq, row in enumerate(rows):
            for offset, token in enumerate(row):
                batch.token[k], batch.pos[k] = token, start + offset
                batch.n_seq_id[k], batch.seq_id[k][0] = 1, seq
                batch.logits[k] = all_logits or offset == len(row) - 1
                k += 1
        batch.n_tokens = k
        begin = time.perf_counter()
        status = self.lib.llama_decode(self.ctx, batch)
        self.lib.llama_synchronize(self.ctx)
        elapsed = time.perf_counter() - begin
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        return elapsed

    def _clear(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def prefill(self, ids: np.ndarray) -> float:
        """Seconds to run ``[batch, seqlen]`` token ids from an empty cache, all logits."""
        self._clear()
        return self._run(ids.tolist(), 0, all_logits=True)

    def decode(self, prompt: list[int], steps: list[int]) -> float:
        """Seconds for single-token steps after an (untimed) prompt."""
        self._clear()
        self._run([prompt], 0, all_logits=False)
        return sum(self._run([[token]], len(prompt) + i, all_logits=False)
                   for i, token in enumerate(steps))

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


def pruned_model(entry: str, out: Path, samples: dict[str, int]):
    """``dense`` or ``method:ratio``: the loaded (and pruned) SmolLM2."""
    method, _, ratio = entry.partition(":")
    overrides = ["model=smollm2_135m", f"method={method}", "logger=none", "model.device=cpu"]
    if ratio:
        overrides.append(f"schedule.ratio={ratio}")
    if method in samples:
        overrides.append(f"calibration.nsamples={samples[method]}")
    run = validate(compose_job(overrides, out))
    loaded = load_model(run.model, run.paths.cache_dir)
    pruning.prune(METHODS.get(method)(run.method.params), loaded, run)
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--types", nargs="+", default=["f32", "q4_k_m"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=64, help="decode prompt length")
    parser.add_argument("--decode", type=int, default=64, help="timed decode steps")
    parser.add_argument("--samples", nargs="*", default=["interaction=32"],
                        metavar="METHOD=N", help="calibration windows of a method (default: "
                        "interaction=32; its module-removal scores cost one pass per sub-layer)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_llamacpp")
    args = parser.parse_args()
    samples = {k: int(v) for k, v in (item.split("=", 1) for item in args.samples)}
    configure_logging()
    torch.set_num_threads(args.threads)
    shapes = {"1x512": (1, 512), "8x128": (8, 128)}
    rng = np.random.default_rng(0)
    inputs = {name: rng.integers(0, 49152, size=shape) for name, shape in shapes.items()}
    prompt = rng.integers(0, 49152, size=args.prompt).tolist()
    steps = rng.integers(0, 49152, size=args.decode).tolist()
    contexts = {"1x512": 256.5, "8x128": 64.5, "decode": args.prompt + (args.decode + 1) / 2}
    spec = SpeedSpec(grid=[list(s) for s in shapes.values()], decode_tokens=args.decode,
                     decode_prompt=args.prompt, warmup=1, repeats=args.repeats)

    models, timers = {}, {}
    for entry in args.models:
        loaded = pruned_model(entry, args.out / "jobs", samples)
        torch_speed = measure_speed(loaded.model, loaded.adapter, spec, loaded.device, 49152)
        models[entry] = {
            "macs": {k: macs_per_token(loaded.adapter, c)["total"] for k, c in contexts.items()},
            "torch_tokens_per_s": {**{k: v["tokens_per_s"]
                                      for k, v in torch_speed["prefill"].items()},
                                   "decode": torch_speed["decode"]["tokens_per_s"]},
            "params": loaded.adapter.total_parameter_count(), "gguf": {}}
        source = loaded.source.removeprefix("gguf:")
        for kind in args.types:
            path = args.out / "gguf" / f"{entry.replace(':', '-')}-{kind}.gguf"
            report = export_gguf(loaded.adapter, path, kind, vocab_gguf=Path(source))
            models[entry]["gguf"][kind] = {"size_bytes": report.size_bytes,
                                           "overhead_macs": report.overhead_macs}
            timers[(entry, kind)] = LlamaCppTimer(path, args.threads, 1024, 8)
        print(f"{entry}: pruned, timed in PyTorch, exported", flush=True)

    times: dict[tuple[str, str], dict[str, list[float]]] = {
        key: {name: [] for name in [*shapes, "decode"]} for key in timers}
    for timer in timers.values():  # warm-up
        timer.prefill(inputs["1x512"])
        timer.decode(prompt, steps[:4])
    for repeat in range(args.repeats):
        for key, timer in timers.items():
            for name, ids in inputs.items():
                times[key][name].append(timer.prefill(ids))
            times[key]["decode"].append(timer.decode(prompt, steps))
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    for timer in timers.values():
        timer.close()

    tokens = {"1x512": 512, "8x128": 1024, "decode": args.decode}
    rows = []
    for (entry, kind), measured in times.items():
        row = {"model": entry, "type": kind, **models[entry]["gguf"][kind],
               "params": models[entry]["params"]}
        for name, seconds in measured.items():
            dense = times[("dense", kind)][name] if ("dense", kind) in times else seconds
            rate = tokens[name] / statistics.median(seconds)
            speedup = statistics.median(dense) / statistics.median(seconds)
            limit = models.get("dense", models[entry])["macs"][name] / models[entry]["macs"][name]
            torch_rate = models[entry]["torch_tokens_per_s"][name]
            torch_dense = models.get("dense", models[entry])["torch_tokens_per_s"][name]
            row[name] = {"tokens_per_s": rate, "times_s": seconds,
                         "spread": [tokens[name] / max(seconds), tokens[name] / min(seconds)],
                         "speedup": speedup, "mac_speedup": limit,
                         "efficiency": speedup / limit if limit != 1 else None,
                         "torch_tokens_per_s": torch_rate,
                         "torch_speedup": torch_rate / torch_dense}
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    print(table)
    (args.out / "bench_llamacpp.md").write_text(table + "\n")
    (args.out / "bench_llamacpp.json").write_text(json.dumps(
        {"settings": {"threads": args.threads, "repeats": args.repeats, "prompt": args.prompt,
                      "decode": args.decode, "llama_cpp": _version()}, "rows": rows}, indent=1))


def _version() -> str:
    from importlib.metadata import version
    return version("llama-cpp-python")


def markdown(rows: list[dict]) -> str:
    """One line per (model, type): tokens/s, speed-up, MAC limit, efficiency, PyTorch's."""
    lines = ["| model | type | MiB | phase | tokens/s (min-max) | speed-up | MAC limit | "
             "efficiency | PyTorch speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for phase in ("1x512", "8x128", "decode"):
            m = row[phase]
            efficiency = "-" if m["efficiency"] is None else f"{m['efficiency']:.2f}"
            lines.append(
                f"| {row['model']} | {row['type']} | {row['size_bytes'] / 2**20:.0f} | {phase} | "
                f"{m['tokens_per_s']:.0f} ({m['spread'][0]:.0f}-{m['spread'][1]:.0f}) | "
                f"{m['speedup']:.2f}x | {m['mac_speedup']:.2f}x | {efficiency} | "
                f"{m['torch_speedup']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
