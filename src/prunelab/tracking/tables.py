"""Paper-layout tables from the results.json files of one or more sweep folders.

Rows are method x ratio (dense first, then ratio by ratio in the order the sweep listed the
methods); a method swept over other settings too (FLAP's metric, structure, bias
compensation) gets one row per setting, labelled by the settings that vary. Columns are the
perplexity datasets, then the zero-shot tasks and their average (in %). A method/ratio cell
that no finished job covers shows as missing, never as zero (the ratios of a table are those
any of its jobs asked for, dense jobs included); a row whose job failed shows ``failed`` in
every cell (and its error in the CSV). When any job trained after pruning (``recovery``),
every row says which: "w/o tune" rows (from ``recovery=none`` jobs, else from the figures a
recovered job measured before training) sit above their "w/ tune: lora" / "w/ tune: distill"
rows, as in the papers. Results measured under different protocols
(model, benchmark) are refused, naming the differing fields: their numbers cannot share a
table.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.atomic import write_text_atomic
from prunelab.errors import PrunelabError
from prunelab.eval.zeroshot_tasks import TASKS
from prunelab.record import RESULTS_FILE, ResultsRecord, flat_measurements, read_record
from prunelab.registry import METHODS
from prunelab.tracking.identity import (
    ABSENT,
    comparable_config,
    describe_differences,
    differing_keys,
    flatten,
    job_fingerprint,
)
from prunelab.tracking.results import FAILURE_FILE

MISSING = "–"
FAILED = "failed"
DATASET_LABELS = {"wikitext2": "WikiText2", "ptb": "PTB", "c4": "C4"}


@dataclass(frozen=True)
class Column:
    """A column of one kind: ``ppl``, ``accuracy``, ``latency``, ``throughput``, ``speedup``.

    Its values are the record's flat metric ``metric`` times ``scale``: accuracies in %,
    latency as the median prefill time in ms, throughput as decode tokens per second, the
    speed-up over the dense model timed beside it (``benchmark.speed.reference=dense``) with
    the bounds of its confidence interval under ``<key>/low`` and ``<key>/high``.
    """

    key: str  # ppl/<dataset>, zero_shot/<task>, zero_shot/average, speed/...
    label: str
    kind: str
    metric: str = ""
    scale: float = 1.0


def columns_of(record: ResultsRecord) -> list[Column]:
    """The columns one job's metrics give: perplexities, then tasks and their average."""
    metrics = record.metrics
    columns = [Column(f"ppl/{name}", DATASET_LABELS.get(name, name), "ppl", f"ppl/{name}")
               for name in metrics.perplexity]
    if metrics.zero_shot is not None:
        columns += [Column(f"zero_shot/{task}",
                           TASKS[task].label if task in TASKS else task, "accuracy",
                           f"zero_shot/{task}", 100.0) for task in metrics.zero_shot.tasks]
        columns.append(Column("zero_shot/average", "Avg", "accuracy", "zero_shot/average", 100.0))
    if metrics.speed is not None:
        columns += [Column(f"speed/prefill/{shape}", f"Prefill {shape} ms", "latency",
                           f"speed/prefill_{shape}/median_s", 1000.0)
                    for shape in metrics.speed.prefill]
        if metrics.speed.decode is not None:
            columns.append(Column("speed/decode", "Decode tok/s", "throughput",
                                  "speed/decode/tokens_per_s"))
        if metrics.speed.settings.get("reference") == "dense":
            confidence = f"{metrics.speed.settings.get('confidence', 0.95):.0%}"
            names = [f"prefill_{shape}" for shape in metrics.speed.prefill]
            names += ["decode"] if metrics.speed.decode is not None else []
            columns += [Column(f"speedup/{name}", f"Speed-up {name.replace('_', ' ')} "
                               f"({confidence} CI)", "speedup", f"speed/{name}/speedup")
                        for name in names]
    return columns


def values_of(record: ResultsRecord, before_recovery: bool = False) -> dict[str, float]:
    """Column key -> value of one job (accuracies in %, as the papers print them).

    ``before_recovery``: the figures measured after pruning, before training.
    """
    flat = flat_measurements(record.recovery.before) if before_recovery \
        else record.flat_metrics()
    values = {}
    for c in columns_of(record):
        if c.metric not in flat:
            continue
        values[c.key] = flat[c.metric] * c.scale
        if c.kind == "speedup":
            values[f"{c.key}/low"] = flat[f"{c.metric}_low"]
            values[f"{c.key}/high"] = flat[f"{c.metric}_high"]
    return values


NOT_TUNED = "w/o tune"


def tune_label(config: dict[str, Any]) -> str:
    """"w/o tune", or "w/ tune: <recovery>" (with the trained weights when not LoRA)."""
    recovery = config.get("recovery") or {}
    name = recovery.get("name", "none")
    if name == "none":
        return NOT_TUNED
    return f"w/ tune: {name}" + (", full" if recovery.get("train", "lora") == "full" else "")


#: Config fields that must agree across a table (batch size does not change a number).
_PROTOCOL_IGNORED = ("model.device", "benchmark.batch_size", "benchmark.description")


@dataclass
class Row:
    """One table row: a method at one ratio (and one setting of its swept parameters)."""

    method: str
    ratio: float
    variant: str = ""
    params: int | None = None
    values: dict[str, float] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    failed: str | None = None  # the error of the job that should have filled this row
    tune: str = ""  # "w/o tune" / "w/ tune: ..." when the table has recovered jobs

    @property
    def label(self) -> str:
        details = "; ".join(d for d in (self.variant, self.tune) if d)
        return f"{self.method} ({details})" if details else self.method


@dataclass
class ResultTable:
    """Rows and columns of a sweep, with the protocol they share."""

    model: str
    columns: list[Column]
    rows: list[Row]
    protocol: dict[str, Any]

    def cells(self) -> list[list[str]]:
        """Header plus formatted rows, shared by every output format."""
        header = ["Method", "Ratio", "Params", *[c.label for c in self.columns]]
        body = []
        for row in self.rows:
            values = [FAILED if row.failed else _speedup(row.values, c.key)
                      if c.kind == "speedup" else _number(row.values.get(c.key))
                      for c in self.columns]
            body.append([row.label, f"{row.ratio:.0%}", _params(row.params), *values])
        return [header, *body]

    def to_markdown(self) -> str:
        header, *body = self.cells()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)

    def to_csv(self) -> str:
        """Numbers unformatted (empty when missing), for spreadsheets and pandas."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        keys = [key for c in self.columns for key in (
            [c.key, f"{c.key}/low", f"{c.key}/high"] if c.kind == "speedup" else [c.key])]
        writer.writerow(["method", "variant", "tune", "ratio", "params", *keys, "failed"])
        for row in self.rows:
            writer.writerow([row.method, row.variant, row.tune, row.ratio,
                             "" if row.params is None else row.params,
                             *["" if row.values.get(key) is None else row.values[key]
                               for key in keys], row.failed or ""])
        return out.getvalue()

    def to_latex(self) -> str:
        header, *body = self.cells()
        escape = _latex_escape
        lines = [r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\toprule",
                 " & ".join(escape(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(escape(c) for c in r).replace(MISSING, "--") + r" \\" for r in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)


def collect_results(folders: list[Path]) -> list[ResultsRecord]:
    """The complete results.json files below ``folders`` (in sweep job order)."""
    found = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise PrunelabError(f"Sweep folder {str(folder)!r} does not exist.")
        for path in sorted(folder.rglob(RESULTS_FILE)):
            record = read_record(path.parent)
            if record is not None:
                found.append(record)
    if not found:
        raise PrunelabError(
            f"No complete {RESULTS_FILE} under {', '.join(map(str, folders))}: the sweep has not "
            "finished any job yet (see each job's failure.json or log).")
    return sorted(found, key=lambda r: (r.job.num is None, r.job.num or 0, str(r.path)))


@dataclass(frozen=True)
class FailedJob:
    """A job folder of a sweep without complete results, and why."""

    path: Path
    error: str
    config: dict[str, Any] | None  # from failure.json; None when the job left none

    @property
    def method(self) -> str | None:
        method = (self.config or {}).get("method")
        return method.get("name") if isinstance(method, dict) else None

    @property
    def ratio(self) -> float:
        """The ratio the job asked for (0 for a method that removes nothing)."""
        if self.method in METHODS and not METHODS.get(self.method).prunes():
            return 0.0
        schedule = (self.config or {}).get("schedule") or {}
        try:
            return round(float(schedule.get("ratio", 0.0)), 4)
        except (TypeError, ValueError):
            return 0.0


def collect_failures(folder: Path) -> list[FailedJob]:
    """Hydra job folders below ``folder`` (they hold ``.hydra/``) without complete results."""
    failed = []
    for job in sorted(p.parent for p in Path(folder).rglob(".hydra")):
        if job == Path(folder) or read_record(job) is not None:
            continue
        note = job / FAILURE_FILE
        try:
            failure = json.loads(note.read_text())
            failed.append(FailedJob(job, failure.get("error", "unknown error"),
                                    failure.get("config")))
        except (OSError, ValueError):
            failed.append(FailedJob(job, f"no {RESULTS_FILE} and no readable {FAILURE_FILE}: "
                                    "the job was killed, or is still running", None))
    return failed


def build_table(results: list[ResultsRecord], failures: list[FailedJob] = ()) -> ResultTable:
    """Arrange results as method x ratio rows; refuse results of different protocols.

    ``failures`` whose method is known become rows marked failed (a finished job of the
    same row wins, e.g. after a relaunch).
    """
    _check_protocol(results)
    tuned = any(r.recovery is not None for r in results)
    columns = columns_of(results[0])
    by_method: dict[str, list[ResultsRecord | FailedJob]] = {}
    for entry in [*results, *[f for f in failures if f.method]]:
        by_method.setdefault(entry.method if isinstance(entry, FailedJob)
                             else entry.method.name, []).append(entry)
    rows: dict[tuple, Row] = {}
    seen_fingerprints: set[str] = set()
    for method, group in by_method.items():
        labels = _variant_labels(method, [entry.config for entry in group])
        failed_rows, untuned_rows = [], []
        for result, variant in zip(group, labels):
            tune = tune_label(result.config or {}) if tuned else ""
            if isinstance(result, FailedJob):
                failed_rows.append(((method, variant, tune, result.ratio), result))
                continue
            fingerprint = job_fingerprint(result.config)
            if fingerprint in seen_fingerprints:  # the same job reached by another sweep point
                continue
            seen_fingerprints.add(fingerprint)
            key = (method, variant, tune, result.ratio)
            if key in rows:
                raise PrunelabError(
                    f"Two different jobs give the row {method} {variant} {tune} at ratio "
                    f"{result.ratio}: {rows[key].sources[0]} and {result.path}. Put them in "
                    "separate tables.")
            rows[key] = Row(method, result.ratio, variant, result.parameters.after.total,
                            values_of(result), [str(result.path)], tune=tune)
            if result.recovery is not None:
                untuned_rows.append(((method, variant, NOT_TUNED, result.ratio), Row(
                    method, result.ratio, variant, result.parameters.after.total,
                    values_of(result, before_recovery=True), [str(result.path)],
                    tune=NOT_TUNED)))
        for key, row in untuned_rows:  # a recovery=none job of the same row wins
            rows.setdefault(key, row)
        for (method_name, variant, tune, ratio), failure in failed_rows:
            if (method_name, variant, tune, ratio) not in rows:
                rows[method_name, variant, tune, ratio] = Row(
                    method_name, ratio, variant, sources=[str(failure.path)],
                    failed=failure.error, tune=tune)
    return ResultTable(results[0].model.name, columns,
                       _arrange(rows, list(by_method), _swept_ratios(results)),
                       _protocol(results[0]))


def write_table(table: ResultTable, folder: Path, stem: str = "table") -> dict[str, Path]:
    """Write ``<stem>.md``, ``.csv`` and ``.tex`` into ``folder``; return their paths."""
    paths = {"markdown": folder / f"{stem}.md", "csv": folder / f"{stem}.csv",
             "latex": folder / f"{stem}.tex"}
    write_text_atomic(paths["markdown"], table.to_markdown() + "\n")
    write_text_atomic(paths["csv"], table.to_csv())
    write_text_atomic(paths["latex"], table.to_latex() + "\n")
    return paths


def _check_protocol(results: list[ResultsRecord]) -> None:
    protocols = [{k: v for k, v in flatten(_protocol(r)).items()
                  if not k.startswith(_PROTOCOL_IGNORED)} for r in results]
    differing = differing_keys(protocols)
    if differing:
        raise PrunelabError(
            "These results were measured under different protocols and cannot share a table:\n"
            f"{describe_differences(differing)}\nMake one table per protocol (pass the folders "
            "separately).")


def _protocol(result: ResultsRecord) -> dict[str, Any]:
    return {"model": result.config["model"], "benchmark": result.config["benchmark"]}


def _swept_ratios(results: list[ResultsRecord]) -> set[float]:
    """Every ratio of the sweep, also those only a dense job (which ignores it) was given."""
    ratios = {r.ratio for r in results}
    for result in results:
        schedule = result.config.get("schedule") or {}
        if result.pruning.plan is None and schedule.get("name") != "explicit":
            ratios.add(round(float(schedule.get("ratio", 0.0)), 4))
    return ratios - {0.0}


def _variant_labels(method: str, job_configs: list[dict[str, Any]]) -> list[str]:
    """For one method's jobs, the settings besides the ratio that vary between them."""
    configs = [comparable_config(c) for c in job_configs]
    budget_params = METHODS.get(method).budget_params if method in METHODS else ()
    for config in configs:
        config.get("schedule", {}).pop("ratio", None)
        for key in budget_params:
            config.get("method", {}).pop(key, None)
        config.pop("model", None)
        config.pop("benchmark", None)
        config.pop("recovery", None)  # rows say it as "w/o tune" / "w/ tune"
    differing = differing_keys(configs)
    return [", ".join(f"{_short_key(key)}={values[i]}" for key, values in differing.items()
                      if values[i] != ABSENT)
            for i in range(len(job_configs))]


def _short_key(key: str) -> str:
    if key in ("schedule.name", "calibration.name"):
        return key.split(".")[0]
    return key.removeprefix("method.")


def _arrange(rows: dict[tuple, Row], method_order: list[str], swept_ratios: set[float]
             ) -> list[Row]:
    """Dense rows first, then by ratio; every (method, variant) gets every ratio of the sweep.

    The sweep's ratios are any job's ``schedule.ratio`` (dense included), so an unfinished
    job shows as a row of missing cells.
    """
    pruned = [r for r in rows.values() if r.ratio > 0]
    ratios = sorted({r.ratio for r in pruned} | swept_ratios)
    variants = list(dict.fromkeys((r.method, r.variant, r.tune) for r in pruned))
    order = {m: i for i, m in enumerate(method_order)}
    first_seen = {mv: i for i, mv in reversed(list(enumerate((m, v) for m, v, _ in variants)))}
    variants.sort(key=lambda mvt: (order[mvt[0]], first_seen[mvt[:2]], mvt[2] != NOT_TUNED))
    arranged = sorted((r for r in rows.values() if r.ratio == 0),
                      key=lambda r: r.tune != NOT_TUNED)
    for ratio in ratios:
        for method, variant, tune in variants:
            arranged.append(rows.get((method, variant, tune, ratio),
                                     Row(method, ratio, variant, tune=tune)))
    return arranged


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _speedup(values: dict[str, float], key: str) -> str:
    """``1.32x (1.28-1.36)``: the speed-up and its confidence interval."""
    if values.get(key) is None:
        return MISSING
    return f"{values[key]:.2f}x ({values[f'{key}/low']:.2f}-{values[f'{key}/high']:.2f})"


def _params(count: int | None) -> str:
    if count is None:
        return MISSING
    if count >= 1e9:
        return f"{count / 1e9:.2f}B"
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}K"


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"),
                          ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text
