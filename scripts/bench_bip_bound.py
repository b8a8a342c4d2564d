"""How tight LLM-BIP's head scores are on a real model: score / measured block-output change.

For every block and query head of SmolLM2-135M (or ``--model``), the head is removed (its
o_proj columns zeroed) and the mean per-token L2 change of the block output is measured on
``--nsamples`` WikiText2 calibration windows. Each Lipschitz estimator's head importance
``(1 + L) E||W_o[:, S_g] A_g||`` (from the same windows) is divided by that measured change:
``bound`` should never fall below 1 (it is an upper bound), ``none`` is the attention-only
change. Prints a Markdown table (median, min, max, share below 1) and writes JSON.

    .venv/bin/python scripts/bench_bip_bound.py                # ~2 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from prunelab.calibration.runner import run_layerwise
from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job
from prunelab.config.schema import validate
from prunelab.data.calibration import sample_calibration
from prunelab.data.corpora import load_corpus
from prunelab.methods.bip import BIP, BIPParams
from prunelab.models.layerwise import block_output, capture_block_inputs
from prunelab.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
ESTIMATORS = ("bound", "empirical", "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model option")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_bip_bound")
    args = parser.parse_args()
    configure_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    run = validate(compose_job([f"model={args.model}", "method=bip",
                                f"calibration.nsamples={args.nsamples}"], args.out))
    loaded = load_model(run.model, run.paths.cache_dir)
    adapter = loaded.adapter
    calib = run.calibration
    corpus = load_corpus(calib.dataset, calib.split, run.paths.data_dir)
    samples = sample_calibration(corpus, loaded.tokenizer, calib.nsamples, calib.seqlen,
                                 calib.seed, mode=calib.mode, joiner=calib.joiner)
    stats = run_layerwise(adapter, samples, list(BIP.statistics), run.calibration.batch_size,
                          loaded.device)
    ratios = {name: [] for name in ESTIMATORS}
    x, kwargs = capture_block_inputs(adapter, samples, len(samples), loaded.device)
    kwargs["use_cache"] = False
    with torch.no_grad():
        for index, (layer, block) in enumerate(zip(adapter.layers, adapter.decoder_layers)):
            y = block_output(block, x, kwargs)
            measured = head_removal_changes(layer, block, x, y, kwargs)
            for name in ESTIMATORS:
                heads, _ = BIP(BIPParams(lipschitz=name)).importance(layer, stats[index])
                ratios[name] += [float(h) / float(m) for h, m in zip(heads, measured)]
            x = y
    rows = {name: {"median": statistics.median(r), "min": min(r), "max": max(r),
                   "below_1": sum(v < 1 for v in r) / len(r), "heads": len(r)}
            for name, r in ratios.items()}
    table = render(rows, args.model, args.nsamples)
    print(table)
    (args.out / "bench_bip_bound.md").write_text(table + "\n")
    (args.out / "bench_bip_bound.json").write_text(json.dumps(rows, indent=1))


def head_removal_changes(layer, block, x, y, kwargs) -> list[torch.Tensor]:
    """Mean per-token L2 change of the block output when each query head alone is removed."""
    weight = layer.o_proj.weight
    changes = []
    for head in range(layer.geometry.num_heads):
        columns = slice(head * layer.head_dim, (head + 1) * layer.head_dim)
        saved = weight[:, columns].clone()
        weight[:, columns] = 0
        changes.append((block_output(block, x, kwargs) - y).norm(dim=-1).mean())
        weight[:, columns] = saved
    return changes


def render(rows: dict, model: str, nsamples: int) -> str:
    lines = [f"LLM-BIP head score / measured block-output change, {model}, {nsamples} x 128 "
             "WikiText2 tokens", "",
             "| lipschitz | heads | median | min | max | share below 1 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['heads']} | {r['median']:.2f} | {r['min']:.2f} | {r['max']:.2f} "
              f"| {r['below_1']:.3f} |" for name, r in rows.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
