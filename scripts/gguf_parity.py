"""Export a saved model folder to every GGUF type and compare llama.cpp with prunelab.

For each type (f32, f16, q8_0, q4_k_m): the file size, perplexity through llama.cpp on the
first ``--windows`` windows of WikiText2 test and PTB test (seqlen ``--seqlen``, the default
suite's protocol), next to prunelab's perplexity of the same windows in PyTorch, and for
every type the largest logit difference on the first window. llama.cpp runs with an f32 KV
cache (``--f16-cache`` for llama.cpp's default), so the f32 row measures the export alone.

    .venv/bin/python scripts/gguf_parity.py outputs/runs/DAY/TIME/model --out parity/
    .venv/bin/python scripts/gguf_parity.py FOLDER --types f32 --windows 16

Prints a Markdown table and writes it, with the figures, as JSON under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from prunelab.cli import configure_logging
from prunelab.data.corpora import load_corpus
from prunelab.eval.perplexity import evaluation_windows, perplexity
from prunelab.export import TENSOR_TYPES, export_gguf
from prunelab.export.folder import load_folder, vocab_source
from prunelab.export.llamacpp import logits, open_gguf
from prunelab.export.llamacpp import perplexity as llama_cpp_perplexity

ROOT = Path(__file__).resolve().parents[1]
#: The default suite's perplexity texts: dataset, split, joiner.
TEXTS = {"wikitext2": ("wikitext2", "test", "\n\n"), "ptb": ("ptb", "test", "\n\n")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a saved model folder (a job's model/)")
    parser.add_argument("--out", type=Path, required=True, help="where the GGUFs and table go")
    parser.add_argument("--types", nargs="+", choices=TENSOR_TYPES, default=list(TENSOR_TYPES))
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--f16-cache", action="store_true", help="llama.cpp's default KV cache")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                        help="the shared data folder ($PRUNELAB_DATA_DIR wins when set)")
    args = parser.parse_args()
    configure_logging()
    vocab = vocab_source(args.folder)
    loaded = load_folder(args.folder)
    windows = {}
    for name, (dataset, split, joiner) in TEXTS.items():
        corpus = load_corpus(dataset, split, args.data_dir)
        windows[name] = evaluation_windows(corpus, loaded.tokenizer, args.seqlen, joiner,
                                           args.windows)
    reference = {name: perplexity(loaded.model, w, 8, loaded.device)["ppl"]
                 for name, w in windows.items()}
    first = windows["wikitext2"][0].tolist()
    with torch.no_grad():
        torch_logits = loaded.model(torch.tensor([first])).logits[0].float().numpy()
    rows = []
    for kind in args.types:
        path = args.out / f"{args.folder.name}-{kind}.gguf"
        report = export_gguf(loaded.adapter, path, kind, vocab, name=args.folder.name)
        llm = open_gguf(path, n_ctx=args.seqlen, threads=args.threads,
                        f32_cache=not args.f16_cache)
        start = time.perf_counter()
        ppl = {name: llama_cpp_perplexity(llm, w.numpy()) for name, w in windows.items()}
        theirs = logits(llm, first)
        rows.append({"type": kind, "size_bytes": report.size_bytes, "ppl": ppl,
                     "eval_s": time.perf_counter() - start,
                     "max_logit_diff": float(np.abs(theirs - torch_logits).max()),
                     "argmax_agreement": float((theirs.argmax(-1)
                                                == torch_logits.argmax(-1)).mean())})
        del llm
    table = markdown(rows, reference, args.windows)
    print(table)
    (args.out / "gguf_parity.md").write_text(table + "\n")
    (args.out / "gguf_parity.json").write_text(json.dumps(
        {"folder": str(args.folder), "windows": args.windows, "seqlen": args.seqlen,
         "f32_cache": not args.f16_cache, "prunelab_ppl": reference, "rows": rows}, indent=1))


def markdown(rows: list[dict], reference: dict[str, float], windows: int) -> str:
    """Size, llama.cpp PPL (and its ratio to prunelab's), logit difference per type."""
    lines = [f"| type | MiB | WikiText2 PPL ({windows} windows) | PTB PPL | max logit diff | "
             "argmax agreement |", "|---|---|---|---|---|---|",
             f"| prunelab (PyTorch) | - | {reference['wikitext2']:.3f} | "
             f"{reference['ptb']:.3f} | - | - |"]
    for row in rows:
        ppl = row["ppl"]
        cells = [f"{ppl[n]:.3f} ({ppl[n] / reference[n] - 1:+.3%})" for n in ("wikitext2", "ptb")]
        lines.append(f"| {row['type']} | {row['size_bytes'] / 2**20:.1f} | {cells[0]} | "
                     f"{cells[1]} | {row['max_logit_diff']:.2e} | "
                     f"{row['argmax_agreement']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
