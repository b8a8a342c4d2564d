"""The memory model on paper: which LLaMA-2 jobs fit one 24 GB GPU and a 64 GB host.

FLAP at 20% with the default calibration (1024 x 128 tokens) and benchmark (perplexity in
batches of 16 x 128, no speed), in float16 on CUDA: each model resident, streamed with the
pruned model evaluated whole, and streamed with layer-wise evaluation. The geometries are
the published LLaMA-2 configs; the host figures add a 0.5 GB interpreter-and-libraries
baseline (what this machine measures). Prints a Markdown table (the README's).

    .venv/bin/python scripts/memory_table.py
"""

from __future__ import annotations

import argparse

from prunelab.config.compose import compose_job
from prunelab.config.schema import validate
from prunelab.models.memory import BlockShape, Geometry, estimate

#: hidden, layers, query heads, KV heads, intermediate (vocabulary 32000, untied head)
LLAMA2 = {"LLaMA-2-7B": (4096, 32, 32, 32, 11008), "LLaMA-2-13B": (5120, 40, 40, 40, 13824),
          "LLaMA-2-70B": (8192, 80, 64, 8, 28672)}
MODES = {"resident": [], "streamed": ["memory=streamed"],
         "streamed + layer-wise eval": ["memory=streamed", "memory.evaluation=layerwise"]}
BASELINE_BYTES = int(0.5e9)


def geometry(hidden: int, layers: int, heads: int, kv: int, inter: int) -> Geometry:
    return Geometry(hidden, hidden // heads, 32000, False,
                    (BlockShape(heads, kv, inter),) * layers, hidden, hidden)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-gb", type=float, default=24.0)
    parser.add_argument("--host-gb", type=float, default=64.0)
    args = parser.parse_args()
    print(f"| model | memory | GPU peak GB (phase) | host peak GB (phase) | fits "
          f"{args.gpu_gb:g} GB GPU + {args.host_gb:g} GB host |")
    print("|---|---|---:|---:|---|")
    for name, shape in LLAMA2.items():
        for mode, overrides in MODES.items():
            job = validate(compose_job(["model.dtype=float16", "model.device=cpu",
                                        "~benchmark.speed", "logger=none", *overrides],
                                       "/tmp/prunelab-memory-table"))
            phases = estimate(geometry(*shape), job, frozenset(), prunes=True, on_cuda=True)
            gpu = max(phases.items(), key=lambda kv: kv[1].device_bytes)
            host = max(phases.items(), key=lambda kv: kv[1].host_bytes)
            gpu_gb = gpu[1].device_bytes / 1e9
            host_gb = (host[1].host_bytes + BASELINE_BYTES) / 1e9
            fits = "yes" if gpu_gb <= args.gpu_gb and host_gb <= args.host_gb else "no"
            print(f"| {name} | {mode} | {gpu_gb:.1f} ({gpu[0]}) | {host_gb:.1f} ({host[0]}) "
                  f"| {fits} |")


if __name__ == "__main__":
    main()
