"""Evaluate an Optuna study's best trial once on the test suites.

A study (``python run.py -m experiment=tune_dynamic ...``, hydra/sweeper=optuna) tunes on a
validation split only; its best parameters are in ``<sweep dir>/optimization_results.yaml``.
This script composes the study's own command-line overrides with those parameters, swaps the
validation benchmark for a test suite (``--benchmark``, default ``default``: WikiText2, PTB and
C4 perplexity) and runs that one job, so the test sets are seen once, by the chosen setting.

    .venv/bin/python scripts/evaluate_best_trial.py \
        outputs/experiments/tune_dynamic/smollm2_135m-latency-0.3
    .venv/bin/python scripts/evaluate_best_trial.py <sweep dir> --benchmark interaction_pareto \
        benchmark.zero_shot.limit=50          # more overrides of the test job after the folder
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from prunelab import pipeline
from prunelab.cli import configure_logging
from prunelab.config.compose import compose_job
from prunelab.errors import PrunelabError


def best_trial_overrides(sweep_dir: Path, benchmark: str, extra: list[str]) -> list[str]:
    """The study's overrides with its best parameters on ``benchmark`` (no objective), then
    ``extra``.
    """
    results = sweep_dir / "optimization_results.yaml"
    trials = sorted(sweep_dir.glob("*/.hydra/overrides.yaml"))
    if not results.is_file() or not trials:
        raise PrunelabError(f"{sweep_dir} holds no finished Optuna study (no "
                            "optimization_results.yaml and trial folders): run the study first "
                            "(python run.py -m experiment=tune_dynamic ...).")
    best = OmegaConf.to_container(OmegaConf.load(results).best_params)
    # a trial's overrides are the study's command line plus that trial's parameters
    study = OmegaConf.to_container(OmegaConf.load(trials[0]))
    kept = [o for o in study if o.split("=", 1)[0].lstrip("+~") not in best
            and not o.startswith(("hydra.", "benchmark", "objective="))]
    return [*kept, *(f"{key}={value}" for key, value in best.items()),
            f"benchmark={benchmark}", "objective=null", *extra]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="more overrides of the test job")
    parser.add_argument("--benchmark", default="default", help="the test suite (conf/benchmark)")
    parser.add_argument("--out", type=Path, help="job folder (default: <sweep dir>/best-<suite>)")
    args = parser.parse_intermixed_args()  # overrides may follow the options
    configure_logging()
    try:
        overrides = best_trial_overrides(args.sweep_dir, args.benchmark, args.overrides)
    except PrunelabError as err:
        raise SystemExit(str(err)) from None
    print("best trial:", " ".join(overrides))
    out = args.out or args.sweep_dir / f"best-{args.benchmark}"
    record = pipeline.run(compose_job(overrides, out))
    for name, value in record.flat_metrics().items():
        if name.startswith(("ppl/", "zero_shot/average", "speed/")):
            print(f"{name}: {value:.4g}")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
