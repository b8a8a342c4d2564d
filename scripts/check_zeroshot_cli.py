"""Check prunelab's in-memory zero-shot path against lm-eval's own command line.

Dense SmolLM2 (or another conf/model option) is saved as a Hugging Face folder; the same
tasks and documents (first ``--limit`` per task) are then scored twice: by prunelab
(``HFLM(pretrained=<model object>)`` + ``simple_evaluate``) and by
``lm_eval run --model hf --model_args pretrained=<folder> --include_path <task folder>``.
Prints acc / acc_norm side by side and exits 1 if any differ.

    .venv/bin/python scripts/check_zeroshot_cli.py --limit 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job
from prunelab.config.schema import ZeroShotSpec, validate
from prunelab.eval.zeroshot import evaluate_zero_shot
from prunelab.eval.zeroshot_tasks import TASKS, prepare_tasks
from prunelab.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("acc", "acc_norm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model option")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--limit", type=int, default=100, help="first N documents per task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "check_zeroshot_cli")
    args = parser.parse_args()
    configure_logging()
    run = validate(compose_job([f"model={args.model}", "method=dense", "model.device=cpu"],
                               args.out))
    loaded = load_model(run.model, run.paths.cache_dir)
    folder = args.out / "model"
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)

    spec = ZeroShotSpec(tasks=args.tasks, limit=args.limit, batch_size=args.batch_size)
    start = time.perf_counter()
    ours = evaluate_zero_shot(loaded.model, loaded.tokenizer, spec, run.paths.cache_dir,
                              loaded.device)["tasks"]
    ours_s = time.perf_counter() - start

    task_folder = prepare_tasks(run.paths.cache_dir, args.tasks)
    cli_out = args.out / "lm_eval_cli"
    command = [str(Path(sys.executable).parent / "lm_eval"), "run", "--model", "hf",
               "--model_args", f"pretrained={folder.resolve()},dtype=float32",
               "--tasks", ",".join(TASKS[t].local_name for t in args.tasks),
               "--include_path", str(task_folder), "--num_fewshot", "0",
               "--limit", str(args.limit), "--batch_size", str(args.batch_size),
               "--device", "cpu", "--output_path", str(cli_out)]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    cli_s = time.perf_counter() - start
    [results_file] = sorted(cli_out.rglob("results_*.json"))[-1:]
    cli = json.loads(results_file.read_text())["results"]

    lines = ["| task | documents | acc (prunelab) | acc (lm_eval CLI) | acc_norm (prunelab) "
             "| acc_norm (lm_eval CLI) | equal |", "|---|---|---|---|---|---|---|"]
    rows, all_equal = {}, True
    for task in args.tasks:
        theirs = {m: cli[TASKS[task].local_name][f"{m},none"] for m in METRICS}
        mine = {m: ours[task][m] for m in METRICS}
        equal = all(abs(mine[m] - theirs[m]) < 1e-12 for m in METRICS)
        all_equal &= equal
        rows[task] = {"documents": ours[task]["documents"], "prunelab": mine,
                      "lm_eval_cli": theirs, "equal": equal}
        lines.append(f"| {task} | {ours[task]['documents']} | {100 * mine['acc']:.2f} "
                     f"| {100 * theirs['acc']:.2f} | {100 * mine['acc_norm']:.2f} "
                     f"| {100 * theirs['acc_norm']:.2f} | {'yes' if equal else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    print(f"\nprunelab in-memory: {ours_s:.0f} s; lm_eval CLI: {cli_s:.0f} s")
    (args.out / "check_zeroshot_cli.md").write_text(table + "\n")
    (args.out / "check_zeroshot_cli.json").write_text(json.dumps(
        {"command": command, "rows": rows, "wall_time_s": {"prunelab": ours_s, "cli": cli_s}},
        indent=1))
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
