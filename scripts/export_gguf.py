"""Export a saved prunelab model folder to a GGUF file that llama.cpp runs (``deci`` graph).

A script rather than a pipeline stage: export reads a finished, saved model (any job's
``model/`` folder, or a dense LLaMA folder), costs nothing in a sweep that does not need it,
and one pruned folder is usually exported to several tensor types.

    .venv/bin/python scripts/export_gguf.py outputs/runs/DAY/TIME/model --out pruned.gguf
    .venv/bin/python scripts/export_gguf.py FOLDER --out pruned-q4.gguf --type q4_k_m
    .venv/bin/python scripts/export_gguf.py FOLDER --out x.gguf --vocab-from source.gguf

Types: f32, f16 (written directly), q8_0, q4_k_m (llama.cpp's quantisation, through
llama-cpp-python). The tokenizer and chat template are copied from the source model's GGUF,
which a pruned folder records (``--vocab-from`` overrides). Prints what the per-layer
geometry became (zero-padded GQA groups, stand-in sub-layers) and the file size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prunelab.cli import configure_logging
from prunelab.errors import PrunelabError
from prunelab.export import TENSOR_TYPES
from prunelab.export.folder import export_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a saved model folder (a job's model/)")
    parser.add_argument("--out", type=Path, required=True, help="the GGUF file to write")
    parser.add_argument("--type", choices=TENSOR_TYPES, default="f32", dest="tensor_type")
    parser.add_argument("--vocab-from", type=Path, default=None,
                        help="GGUF whose tokenizer and chat template are copied")
    parser.add_argument("--no-vocab", action="store_true",
                        help="write no tokenizer (the file then runs on token ids only)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        report = export_folder(args.folder, args.out, args.tensor_type, args.vocab_from,
                               args.no_vocab)
    except PrunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {report.path} ({report.tensor_type}, {report.size_bytes / 2**20:.1f} MiB)")
    print(f"padding query heads: {report.padding_heads}, repeated KV heads: "
          f"{report.repeated_kv_heads}, zero-head attentions: {report.zero_heads}, "
          f"zero-width MLP stand-ins: {report.zero_mlps}, "
          f"extra MACs/token: {report.overhead_macs:,.0f}")
    print(json.dumps({"per_layer": report.layers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
