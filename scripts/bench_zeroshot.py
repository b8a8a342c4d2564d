"""Zero-shot accuracy of the embedded default (dense SmolLM2-135M) on the seven tasks, offline.

Full splits by default (BoolQ 3270, PIQA 1838, HellaSwag 10042, WinoGrande 1267, ARC-e 2376,
ARC-c 1172, OBQA 500 documents), 0-shot, through prunelab's in-memory lm-eval path. Each task
is evaluated in chunks of ``--chunk`` documents, each saved as soon as it finishes
(<out>/<task>/<start>-<stop>.json); a re-run skips finished chunks, so a run of several hours
can be spread over several sessions. Chunks are merged exactly (acc and acc_norm are means over
documents; standard errors recomputed from the merged means). Prints a Markdown table (acc,
acc_norm, the LLM-Pruner metric, documents, wall time) and writes it as JSON.

    .venv/bin/python scripts/bench_zeroshot.py                  # hours on 2 CPU cores
    .venv/bin/python scripts/bench_zeroshot.py --limit 200      # first 200 documents per task
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job
from prunelab.config.schema import ZeroShotSpec, validate
from prunelab.eval.zeroshot import evaluate_zero_shot, reported_metric
from prunelab.eval.zeroshot_tasks import TASKS
from prunelab.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model option")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--limit", type=int, default=None, help="first N documents per task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=500, help="documents per saved chunk")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    configure_logging()
    scope = "full" if args.limit is None else f"first{args.limit}"
    out = args.out or ROOT / "outputs" / "bench_zeroshot" / f"{args.model}-{scope}"
    out.mkdir(parents=True, exist_ok=True)
    run = validate(compose_job([f"model={args.model}", "method=dense"], out))
    loaded = None
    rows = {}
    for task in args.tasks:
        total = min(args.limit or TASKS[task].documents, TASKS[task].documents)
        chunks = []
        for begin in range(0, total, args.chunk):
            end = min(begin + args.chunk, total)
            path = out / task / f"{begin}-{end}.json"
            if not path.is_file():
                if loaded is None:
                    loaded = load_model(run.model, run.paths.cache_dir)
                spec = ZeroShotSpec(tasks=[task], batch_size=args.batch_size)
                start = time.perf_counter()
                result = evaluate_zero_shot(loaded.model, loaded.tokenizer, spec,
                                            run.paths.cache_dir, loaded.device,
                                            documents={task: list(range(begin, end))})
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({**result["tasks"][task],
                                            "wall_time_s": time.perf_counter() - start,
                                            "protocol": result["protocol"]}, indent=1))
            chunks.append(json.loads(path.read_text()))
        rows[task] = merge(chunks)
    table = render(rows)
    print(table)
    (out / "bench_zeroshot.md").write_text(table + "\n")
    (out / "bench_zeroshot.json").write_text(json.dumps(rows, indent=1))


def merge(chunks: list[dict]) -> dict:
    """One task's chunks as one result: document-weighted means, stderr from the merged mean."""
    count = sum(c["documents"] for c in chunks)
    merged = {"split": chunks[0]["split"], "documents": count,
              "wall_time_s": sum(c["wall_time_s"] for c in chunks)}
    for metric in ("acc", "acc_norm"):
        mean = sum(c[metric] * c["documents"] for c in chunks) / count
        merged[metric] = mean
        merged[f"{metric}_stderr"] = math.sqrt(mean * (1 - mean) / (count - 1)) if count > 1 \
            else float("nan")
    return merged


def render(rows: dict[str, dict]) -> str:
    lines = ["| task | split | documents | acc | acc_norm | reported (LLM-Pruner) | wall s |",
             "|---|---|---|---|---|---|---|"]
    for task, row in rows.items():
        metric = reported_metric(task, "llm_pruner")
        lines.append(f"| {task} | {row['split']} | {row['documents']} | {100 * row['acc']:.2f} "
                     f"| {100 * row['acc_norm']:.2f} | {metric} {100 * row[metric]:.2f} "
                     f"| {row['wall_time_s']:.0f} |")
    if len(rows) == len(TASKS):
        average = sum(row[reported_metric(t, "llm_pruner")] for t, row in rows.items()) / len(rows)
        total = sum(row["wall_time_s"] for row in rows.values())
        lines.append(f"| average | | | | | {100 * average:.2f} | {total:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
