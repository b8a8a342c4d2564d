"""The memory model: a job's expected peak memory per phase, from its config and geometry.

Printed before the job loads any weight and recorded in results.json next to what each phase
measured, so a job that will not fit says so first and a job that used more than expected
shows where. The terms (``bytes`` of the model dtype ``d``, batch ``b``, sequence ``s``):

- weights: every parameter, tied embeddings once;
- block activations: ``d*b*s*(6h + (heads + 2 kv_heads)*head_dim + 3I) + 4*b*heads*s^2``
  (residual and norm outputs, q/k/v, float32 attention scores, the MLP's three I-wide
  tensors);
- calibration: the layer-wise engine's two ``[n, s, h]`` buffers (on the host with
  ``calibration.offload``), module-effect scoring a third (the reference final states), and
  float64 statistics of two accumulators per o_proj / down_proj input channel;
- perplexity: final hidden states of a batch and one chunk of logits (models/lm_head.py);
- zero-shot: lm-eval's logits and log-softmax for a batch of 256-token requests;
- speed: logits of the largest prefill shape, the decode KV cache, and the dense reference
  model when the speed-up is measured against it;
- streamed (``memory.stream``): one block (two during surgery: the source and its cut) or
  the fixed parts instead of the weights, and buffers past ``memory.buffer_budget_gb`` on
  disk (the slices in use counted).

Allocator slack, the GGUF conversion of a first run and library caches are not modelled; the
host figures add the interpreter-and-libraries baseline measured when the job starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.config.schema import RunConfig
from prunelab.errors import PrunelabError
from prunelab.models.lm_head import LOGITS_BUDGET_BYTES

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Request length lm-eval's zero-shot batches are modelled with (context + continuation).
ZERO_SHOT_TOKENS = 256
#: Requests per zero-shot document modelled (answer choices: 2 to 5 in the supported tasks).
ZERO_SHOT_CHOICES = 4


@dataclass(frozen=True)
class BlockShape:
    """The widths of one decoder block."""

    heads: int
    kv_heads: int
    intermediate: int


@dataclass(frozen=True)
class Geometry:
    """What memory depends on in a causal LM config (dense or pruned by prunelab)."""

    hidden: int
    head_dim: int
    vocab: int
    tied: bool
    blocks: tuple[BlockShape, ...]
    #: norm weights of a block's attention (2 on LLaMA; Gemma-3 adds a post-norm and the
    #: shared q/k norms) and of its MLP; a sub-layer that lost every unit has none
    attention_norm_params: int
    mlp_norm_params: int

    @classmethod
    def from_config(cls, config) -> Geometry:
        """Read a Hugging Face config (a prunelab pruned config gives per-block widths)."""
        hidden = config.hidden_size
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        layers = config.num_hidden_layers
        kv_maps = getattr(config, "layer_kv_map", None)
        widths = getattr(config, "layer_intermediate_sizes", None)
        if kv_maps is not None and widths is not None:
            blocks = tuple(BlockShape(len(m), len(set(m)), w) for m, w in zip(kv_maps, widths))
        else:
            blocks = (BlockShape(heads, kv_heads, config.intermediate_size),) * layers
        gemma = "gemma3" in str(getattr(config, "source_model_type", None)
                                or config.model_type)
        norms = (2 * hidden + 2 * head_dim, 2 * hidden) if gemma else (hidden, hidden)
        return cls(hidden, head_dim, config.vocab_size,
                   bool(getattr(config, "tie_word_embeddings", False)), blocks, *norms)

    def block_parameters(self, block: BlockShape) -> int:
        """Projection and norm parameters of one block."""
        attention = (2 * block.heads + 2 * block.kv_heads) * self.head_dim * self.hidden
        mlp = 3 * self.hidden * block.intermediate
        return (attention + mlp + self.attention_norm_params * (block.heads > 0)
                + self.mlp_norm_params * (block.intermediate > 0))

    def fixed_parameters(self) -> int:
        """Embeddings, LM head (when untied) and final norm."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def total_parameters(self) -> int:
        return self.fixed_parameters() + sum(self.block_parameters(b) for b in self.blocks)

    def prunable_parameters(self) -> int:
        """Parameters of q/k/v/o and gate/up/down (the pruning ratio's base)."""
        return sum((2 * b.heads + 2 * b.kv_heads) * self.head_dim * self.hidden
                   + 3 * self.hidden * b.intermediate for b in self.blocks)

    def largest_block(self) -> BlockShape:
        return max(self.blocks, key=self.block_parameters)

    def activations(self, batch: int, seqlen: int, dtype_bytes: int) -> int:
        """Transient bytes of one block's forward over ``[batch, seqlen]``."""
        block = self.largest_block()
        widths = (6 * self.hidden + (block.heads + 2 * block.kv_heads) * self.head_dim
                  + 3 * block.intermediate)
        return dtype_bytes * batch * seqlen * widths + 4 * batch * block.heads * seqlen ** 2


@dataclass
class PhaseMemory:
    """Expected peak of one phase: on the device, on the host, and what it is made of."""

    device_bytes: int
    host_bytes: int
    parts: dict[str, int]


def estimate(geometry: Geometry, job: RunConfig, needs: frozenset[str], prunes: bool,
             on_cuda: bool) -> dict[str, PhaseMemory]:
    """Expected peak bytes of every phase the job runs, above the host baseline.

    With ``memory.stream`` the weights resident at any time are one block or the fixed parts
    (embeddings, LM head), and the activation buffers are capped by the spill budget.
    """
    d = DTYPE_BYTES[job.model.dtype]
    weights = geometry.total_parameters() * d
    ratio = float(getattr(job.schedule.params, "ratio", 0.0) or 0.0) if prunes else 0.0
    pruned = weights - int(ratio * geometry.prunable_parameters() * d)
    stream = job.memory.stream
    block = geometry.block_parameters(geometry.largest_block()) * d
    fixed = geometry.fixed_parameters() * d
    resident = max(block, fixed) if stream else weights
    budget = (None if job.memory.buffer_budget_gb is None
              else int(job.memory.buffer_budget_gb * 1e9))
    phases: dict[str, dict[str, int]] = {"load": {"weights": 0 if stream else weights}}
    host_only: dict[str, set[str]] = {}
    if prunes:
        calib = job.calibration
        phases["calibration"] = {
            "weights": resident,
            "activations": geometry.activations(calib.batch_size, calib.seqlen, d),
            "statistics": _statistics_bytes(geometry)}
        layerwise = stream or calib.engine == "layerwise" or calib.offload or bool(
            needs & {"sequential", "module_effects"})
        if layerwise:
            count = 3 if "module_effects" in needs else 2
            phases["calibration"]["buffers"] = _buffers(
                count * calib.nsamples * calib.seqlen * geometry.hidden * d, budget,
                count * calib.batch_size * calib.seqlen * geometry.hidden * d)
            if calib.offload or stream:
                host_only["calibration"] = {"buffers"}
        phases["surgery"] = ({"weights": max(2 * block, fixed)} if stream
                             else {"weights": weights, "block": block})
        if stream:  # streamed surgery cuts blocks in host memory
            host_only["surgery"] = {"weights"}
    bench = job.benchmark
    layerwise_eval = stream and job.memory.evaluation == "layerwise"
    evaluated = resident if layerwise_eval else pruned
    if job.save_model and not stream:
        phases["save"] = {"weights": pruned}
    for name, spec in bench.perplexity.items():
        parts = phases[f"perplexity/{name}"] = {
            "weights": evaluated,
            "activations": geometry.activations(bench.batch_size, spec.seqlen, d),
            "hidden_states": bench.batch_size * spec.seqlen * geometry.hidden * 4,
            "logits_chunk": min(LOGITS_BUDGET_BYTES,
                                2 * bench.batch_size * spec.seqlen * geometry.vocab * 4)}
        if layerwise_eval:
            windows = spec.max_windows or 0  # unknown until the text is tokenised: 0
            parts["buffers"] = _buffers(2 * windows * spec.seqlen * geometry.hidden * d,
                                        budget, 2 * bench.batch_size * spec.seqlen
                                        * geometry.hidden * d)
            host_only[f"perplexity/{name}"] = {"buffers"}
    if bench.zero_shot.tasks:
        zs = bench.zero_shot
        parts = phases["zero_shot"] = {
            "weights": evaluated,
            "activations": geometry.activations(zs.batch_size, ZERO_SHOT_TOKENS, d)}
        if layerwise_eval:  # only answer positions reach the head: no batch of logits
            requests = (zs.limit or 0) * len(zs.tasks) * ZERO_SHOT_CHOICES  # no limit: unknown
            parts["buffers"] = _buffers(2 * requests * ZERO_SHOT_TOKENS * geometry.hidden * d,
                                        budget, 2 * zs.batch_size * ZERO_SHOT_TOKENS
                                        * geometry.hidden * d)
            host_only["zero_shot"] = {"buffers"}
        else:
            parts["logits"] = 2 * zs.batch_size * ZERO_SHOT_TOKENS * geometry.vocab * 4
    if bench.speed.enabled:
        phases["speed"] = _speed(geometry, job, pruned, weights if prunes else 0, d)
    placed = {name: _placed(parts, host_only.get(name, set()), on_cuda)
              for name, parts in phases.items()}
    if on_cuda and not stream:  # from_pretrained reads the weights into host memory first
        placed["load"].host_bytes = weights
    if on_cuda and stream:  # a streamed module is read into host memory, then moved
        for name, phase in placed.items():
            if name not in ("load", "surgery") and phase.parts["weights"] == resident:
                phase.host_bytes += resident
    return placed


def check_budget(phases: dict[str, PhaseMemory], host_budget_gb: float | None,
                 baseline_bytes: int, stream: bool) -> None:
    """Refuse, before loading, a job whose expected host peak exceeds ``host_budget_gb``."""
    if host_budget_gb is None:
        return
    budget = int(host_budget_gb * 1e9)
    over = {name: phase for name, phase in phases.items()
            if phase.host_bytes + baseline_bytes > budget}
    if not over:
        return
    name, phase = max(over.items(), key=lambda item: item[1].host_bytes)
    advice = ("Even streamed, one block or the embeddings (with the buffers) do not fit: "
              "raise the budget, lower memory.buffer_budget_gb or the batch sizes, or use a "
              "smaller dtype." if stream else
              "Stream the weights (memory=streamed) or raise the budget.")
    raise PrunelabError(
        f"memory.host_budget_gb={host_budget_gb} ({budget / 1e9:.3f} GB) is below what phase "
        f"{name!r} is expected to need: {(phase.host_bytes + baseline_bytes) / 1e9:.3f} GB "
        f"(the {baseline_bytes / 1e9:.3f} GB the process holds already included).\n"
        f"{format_table(phases, baseline_bytes)}\n{advice}")


def _buffers(whole: int, budget: int | None, slices: int) -> int:
    """Activation buffers: whole when they fit the budget, else the slices in use."""
    return whole if budget is None or whole <= budget else slices


def _speed(geometry: Geometry, job: RunConfig, pruned: int, dense: int, d: int
           ) -> dict[str, int]:
    speed = job.benchmark.speed
    shapes = [tuple(shape) for shape in speed.grid]
    if speed.decode_tokens:
        shapes.append((1, speed.decode_prompt))
    batch, seqlen = max(shapes, key=lambda shape: shape[0] * shape[1])
    block = geometry.largest_block()
    context = speed.decode_prompt + speed.decode_tokens
    parts = {"weights": pruned,
             "activations": geometry.activations(batch, seqlen, d),
             "logits": batch * seqlen * geometry.vocab * d,
             "kv_cache": 2 * len(geometry.blocks) * block.kv_heads * geometry.head_dim
             * context * d}
    if speed.reference == "dense" and dense:
        parts["dense_reference"] = dense
    return parts


def _statistics_bytes(geometry: Geometry) -> int:
    """Two float64 accumulators per input channel of every o_proj and down_proj."""
    return sum(2 * 8 * (b.heads * geometry.head_dim + b.intermediate) for b in geometry.blocks)


def _placed(parts: dict[str, int], host_only: set[str], on_cuda: bool) -> PhaseMemory:
    """On the CPU everything is host memory; on CUDA all but ``host_only`` is on the device."""
    host = sum(v for k, v in parts.items() if not on_cuda or k in host_only)
    device = sum(v for k, v in parts.items() if on_cuda and k not in host_only)
    return PhaseMemory(device, host, parts)


def format_table(phases: dict[str, PhaseMemory], baseline_bytes: int) -> str:
    """The printed form: one row per phase, in GB, with the largest parts named."""
    rows = [f"{'phase':<22}{'device GB':>10}{'host GB':>9}  made of (GB)"]
    for name, phase in phases.items():
        parts = ", ".join(f"{k} {v / 1e9:.3f}" for k, v in
                          sorted(phase.parts.items(), key=lambda kv: -kv[1]))
        rows.append(f"{name:<22}{phase.device_bytes / 1e9:>10.3f}"
                    f"{(phase.host_bytes + baseline_bytes) / 1e9:>9.3f}  {parts}")
    rows.append(f"host figures include the {baseline_bytes / 1e9:.3f} GB the process held "
                "before loading (interpreter, torch, libraries)")
    return "\n".join(rows)
