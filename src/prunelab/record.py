"""What a job's results.json holds, as typed records, and the one reader of those files.

The pipeline builds a :class:`ResultsRecord` and writes it; resuming a sweep, the sweep
tables, the W&B summary and ``scripts/make_table.py`` read it back with :func:`read_record`.
Every consumer walks the record through its fields and :meth:`ResultsRecord.flat_metrics`,
so no key path into the JSON is written twice. Reading checks the file against these
dataclasses (unknown or missing keys fail, naming them) and converts older schema versions.

Schema versions: 1 (until the pruning stage was split out of the methods); 2 adds
``pruning.removed_blocks``, the blocks that execute nothing (whole-block methods, or any plan
that removed a block's attention and MLP together); 3 adds ``recovery`` (training after pruning,
with the metrics measured before it), absent (None) in older files; 5 adds ``memory`` (each
phase's peak as the memory model predicted it and as measured), None in older files.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.config.typed import to_dataclass
from prunelab.errors import PrunelabError

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 5


@dataclass
class JobInfo:
    """Which job this was: its sweep group, name, number, fingerprint, folder and times."""

    group: str
    name: str
    num: int | None
    fingerprint: str
    output_dir: str
    started_at: str
    finished_at: str
    reused_from: str | None = None  # results copied from an identical job of the sweep


@dataclass
class ModelInfo:
    """The model that was pruned and where it ran."""

    name: str
    source: str
    model_type: str
    device: str
    dtype: str
    load_time_s: float


@dataclass
class MethodInfo:
    """The method and its resolved config group."""

    name: str
    params: dict[str, Any]


@dataclass
class ParameterCounts:
    """Prunable (q/k/v/o, gate/up/down) and total parameters."""

    prunable: int
    total: int


@dataclass
class Parameters:
    """Parameter counts before and after pruning."""

    before: ParameterCounts
    after: ParameterCounts


@dataclass
class LayerSizes:
    """One decoder block's geometry."""

    layer: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int


@dataclass
class PruningInfo:
    """What the pruning stage did: ratios, costs, the plan and its details."""

    ratio_asked: float
    ratio_achieved: float
    ratio_achieved_total: float
    wall_time_s: dict[str, float]
    peak_memory_bytes: dict[str, int]
    details: dict[str, Any]
    plan: dict[str, Any] | None
    removed_blocks: list[int] = field(default_factory=list)


@dataclass
class PerplexityResult:
    """One perplexity measurement with the protocol it followed."""

    ppl: float
    mean_nll: float
    windows: int
    predicted_tokens: int
    wall_time_s: float
    dataset: str
    split: str
    source: str
    rows: int
    seqlen: int
    joiner: str
    max_windows: int | None
    documents: list[int] | None
    metric: str
    bos: bool = False  # each window followed a BOS token (model.bos)


@dataclass
class TaskResult:
    """One zero-shot task: lm-eval's metrics and the one the paper convention reports."""

    acc: float | None
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    metric: str
    value: float
    documents: int
    split: str
    lm_eval_task: str


@dataclass
class ZeroShotAverage:
    """Mean of the reported task metrics."""

    value: float
    convention: str
    tasks: list[str]


@dataclass
class ZeroShotResult:
    """Zero-shot accuracy per task, their average and the protocol."""

    tasks: dict[str, TaskResult]
    average: ZeroShotAverage
    protocol: dict[str, Any]


@dataclass
class Repeats:
    """Repeated timings of one measurement: median, range, every repeat, throughput."""

    median_s: float
    min_s: float
    max_s: float
    times_s: list[float]
    tokens: int
    tokens_per_s: float


@dataclass
class SpeedUp:
    """Reference time / model time over paired repeats, with its confidence interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    repeats: int


@dataclass
class Timing(Repeats):
    """One measurement of the model, with the dense reference's when both were timed.

    ``reference`` and ``speedup`` are filled with ``benchmark.speed.reference=dense``: the
    dense model timed interleaved with this one, and the speed-up the pairs give.
    """

    peak_memory_bytes: int
    macs_per_token: dict[str, float]
    reference: Repeats | None = None
    speedup: SpeedUp | None = None


@dataclass
class PrefillTiming(Timing):
    """Prefill of one (batch, sequence length) shape."""

    batch: int = 0
    seqlen: int = 0


@dataclass
class DecodeTiming(Timing):
    """Greedy decode steps with a KV cache after a prompt."""

    prompt: int = 0
    new_tokens: int = 0


@dataclass
class SpeedResult:
    """Prefill timings by shape (``"8x128"``), decode timing and the settings."""

    prefill: dict[str, PrefillTiming]
    settings: dict[str, Any]
    decode: DecodeTiming | None = None


@dataclass
class Metrics:
    """Everything the benchmark suite measured."""

    perplexity: dict[str, PerplexityResult]
    zero_shot: ZeroShotResult | None = None
    speed: SpeedResult | None = None


@dataclass
class RecoveryInfo:
    """Training after pruning (recovery/): what it trained on, what it cost, where it ended.

    ``before`` holds the suite's perplexity and zero-shot measured on the pruned model before
    training (the papers' "w/o tune" row); the record's ``metrics`` are after it.
    """

    name: str
    train: str
    dtype: str
    data: dict[str, Any]
    allow_eval_overlap: bool
    tokens: int  # tokens trained on (micro-batches x batch x seqlen)
    micro_batches: int
    optimizer_steps: int
    epochs: float  # passes over the training windows
    trainable_parameters: int
    wall_time_s: float
    tokens_per_s: float
    peak_memory_bytes: dict[str, int]
    teacher_memory_bytes: int | None
    loss: list[float]  # per optimizer step (distill: the combined loss)
    final_loss: float  # mean of the last tenth of the steps
    resumed_from_step: int | None
    before: Metrics


@dataclass
class Evaluation:
    """Wall time of the evaluation, in total and per part."""

    wall_time_s: float
    parts_s: dict[str, float]


@dataclass
class MemoryInfo:
    """Peak memory per phase: predicted by the memory model (models/memory.py) and measured.

    ``kind`` is what was measured: ``rss_peak`` (the process's resident set, host figures
    include ``baseline_bytes``, what it held before loading) or ``cuda_max_allocated``.
    """

    kind: str
    baseline_bytes: int
    predicted_host_bytes: dict[str, int]
    predicted_device_bytes: dict[str, int]
    measured_bytes: dict[str, int]
    process_peak_bytes: int


@dataclass
class WandbInfo:
    """Where the job's W&B run went (None when not logged)."""

    mode: str | None
    run_dir: str | None


@dataclass
class ResultsRecord:
    """One job's results.json."""

    job: JobInfo
    config: dict[str, Any]
    environment: dict[str, Any]
    model: ModelInfo
    method: MethodInfo
    schedule: dict[str, Any] | None
    parameters: Parameters
    pruning: PruningInfo
    layers: list[LayerSizes]
    layers_before: list[LayerSizes]
    metrics: Metrics
    evaluation: Evaluation
    wandb: WandbInfo
    recovery: RecoveryInfo | None = None
    memory: MemoryInfo | None = None
    schema_version: int = SCHEMA_VERSION
    complete: bool = True
    #: the results.json this record was read from (not saved in it)
    path: Path | None = field(default=None, init=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, ``schema_version`` and ``complete`` first."""
        data = dataclasses.asdict(self)
        data.pop("path")
        head = {"schema_version": data.pop("schema_version"), "complete": data.pop("complete")}
        return {**head, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = RESULTS_FILE) -> ResultsRecord:
        """Check ``data`` against the schema (converting older versions) and build it."""
        data = upgrade(data, where)
        problems: list[str] = []
        record = to_dataclass(cls, data, "results", problems)
        if problems:
            raise PrunelabError(f"{where} does not match results schema version "
                                f"{SCHEMA_VERSION}:\n" + "\n".join(f"  - {p}" for p in problems)
                                + "\nRe-run the job (overwrite=true) to write it anew.")
        return record

    @property
    def ratio(self) -> float:
        """The fraction the job asked for (0 for a job that removed nothing)."""
        return 0.0 if self.pruning.plan is None else round(self.pruning.ratio_asked, 4)

    def flat_metrics(self) -> dict[str, float]:
        """Scalar metrics with slash-separated keys: W&B summaries and sweep tables read these.

        ``zero_shot/<task>`` is the paper convention's metric (a fraction), prefill and decode
        timings are in seconds and tokens per second.
        """
        flat = flat_measurements(self.metrics)
        flat["params/after_total"] = self.parameters.after.total
        flat["pruning/ratio_achieved"] = self.pruning.ratio_achieved
        flat["pruning/wall_time_s"] = self.pruning.wall_time_s["total"]
        flat["evaluation/wall_time_s"] = self.evaluation.wall_time_s
        if self.recovery is not None:
            flat["recovery/final_loss"] = self.recovery.final_loss
            flat["recovery/tokens_per_s"] = self.recovery.tokens_per_s
            flat["recovery/wall_time_s"] = self.recovery.wall_time_s
            flat.update({f"before_recovery/{key}": value for key, value
                         in flat_measurements(self.recovery.before).items()})
        return flat


def flat_measurements(m: Metrics) -> dict[str, float]:
    """The suite's measurements with slash-separated keys (see :meth:`flat_metrics`)."""
    flat = {f"ppl/{name}": result.ppl for name, result in m.perplexity.items()}
    if m.zero_shot is not None:
        for task, result in m.zero_shot.tasks.items():
            flat.update({f"zero_shot/{task}/{key}": getattr(result, key)
                         for key in ("acc", "acc_norm") if getattr(result, key) is not None})
            flat[f"zero_shot/{task}"] = result.value
        flat["zero_shot/average"] = m.zero_shot.average.value
    if m.speed is not None:
        timings = {f"prefill_{shape}": timing for shape, timing in m.speed.prefill.items()}
        if m.speed.decode is not None:
            timings["decode"] = m.speed.decode
        for name, timing in timings.items():
            if name != "decode":
                flat[f"speed/{name}/median_s"] = timing.median_s
            flat[f"speed/{name}/tokens_per_s"] = timing.tokens_per_s
            if timing.speedup is not None:
                flat.update({f"speed/{name}/speedup{suffix}": value for suffix, value in (
                    ("", timing.speedup.ratio), ("_low", timing.speedup.low),
                    ("_high", timing.speedup.high))})
    return flat


def upgrade(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` converted to the current schema version, or an error naming its version."""
    version = data.get("schema_version")
    if version == SCHEMA_VERSION:
        return data
    if version in (2, 3, 4):  # 3 -> 4 -> 5 added optional fields only
        return {**data, "schema_version": SCHEMA_VERSION}
    if version == 1:
        plan = (data.get("pruning") or {}).get("plan")
        removed = [] if plan is None else [i for i, layer in enumerate(plan["layers"])
                                           if not layer["heads"] and not layer["channels"]]
        return {**data, "schema_version": SCHEMA_VERSION,
                "pruning": {**data["pruning"], "removed_blocks": removed}}
    raise PrunelabError(f"{where} has results schema version {version!r}; this prunelab reads "
                        f"versions 1 to {SCHEMA_VERSION}. Read it with the prunelab version that "
                        "wrote it (environment.git_revision in the file), or re-run the job.")


def read_record(run_dir: str | Path) -> ResultsRecord | None:
    """The complete results of a job folder, or None when the job has not finished.

    A file that is not complete JSON (a job killed mid-write cannot leave one: writes are
    atomic) or not marked complete counts as unfinished; one of an unknown schema is an error.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not data.get("complete"):
        return None
    record = ResultsRecord.from_dict(data, str(path))
    record.path = path
    return record
