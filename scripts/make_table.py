"""Paper-layout table of one or more sweep folders (their results.json files).

Rows method x ratio (dense first), columns the evaluated datasets; written as Markdown, CSV
and LaTeX (table.md, table.csv, table.tex) and printed as Markdown. Results measured under
different protocols are refused, naming the fields that differ.

    .venv/bin/python scripts/make_table.py outputs/experiments/flap_table2/smollm2_135m-smoke
    .venv/bin/python scripts/make_table.py SWEEP_A SWEEP_B --out tables/ --stem flap_t2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.tracking.plots import plot_metric_vs_ratio, plot_pareto
from prunelab.tracking.tables import build_table, collect_results, write_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="sweep folders to read")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the table files (default: the first folder)")
    parser.add_argument("--stem", default="table", help="file name stem (default: table)")
    parser.add_argument("--plot", action="store_true",
                        help="also write <stem>_metrics_vs_ratio.png (and <stem>_pareto.png "
                        "when speed was measured)")
    args = parser.parse_args(argv)
    try:
        table = build_table(collect_results(args.folders))
    except PrunelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = args.out or args.folders[0]
    paths = write_table(table, out, args.stem)
    if args.plot:
        paths["plot"] = plot_metric_vs_ratio(table, out / f"{args.stem}_metrics_vs_ratio.png")
        pareto = plot_pareto(table, out / f"{args.stem}_pareto.png")
        if pareto is not None:
            paths["pareto"] = pareto
    print(table.to_markdown())
    print("\n" + "\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
