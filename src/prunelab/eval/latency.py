"""Whole-model latency profile: what the model's measured time at a declared shape is made of.

A shape is a prefill call of ``batch x seqlen`` tokens, or one decode step (one new token) with
a KV cache of ``context`` positions. At each shape, on the running device, dtype and thread
count, the model is timed as the speed benchmark times it (eval/speed.py: a forward without
cache; decode steps after an untimed prompt), and so is each of a few pruned variants of it
(models/surgery.py, one at a time, each timed interleaved with the model so drift
cancels) in which every block keeps the same width: fewer query heads, fewer KV
heads, fewer channels, no attention, no MLP, neither. Least squares over these whole-model
times fits, per block, ``fixed + per_head * heads + per_kv * kv_heads`` for attention and
``fixed + per_channel * channels`` for the MLP (a sub-layer's fixed part is paid while it keeps
any unit), plus the model's own fixed part.

Timing whole models rather than sub-layers on their own matters: a sub-layer timed alone runs
with its weights hot in the processor's caches and none of the per-module overhead, which
priced a SmolLM2 decode step's blocks at a quarter of their real cost (their weights stream
from memory in the model). The embedding, final norm and LM head are also timed on their own
(``head_s``), to split the fixed part for diagnostics (schedules/targets.py derives it).

Profiles are cached per (device, dtype, threads, model geometry, shape), so each is measured
once. schedules/targets.py turns them into the ``latency`` and ``latency_decode`` currencies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from prunelab.atomic import write_text_atomic
from prunelab.errors import PrunelabError
from prunelab.eval.intervals import interleaved_times
from prunelab.eval.speed import decode_steps, prefill_call, time_calls
from prunelab.models.adapters import LayerAdapter, LayerGeometry, ModelAdapter
from prunelab.models.plan import LayerPlan, PruningPlan
from prunelab.models.surgery import prune_model

log = logging.getLogger(__name__)
PROFILE_VERSION = 4
WARMUP, REPEATS = 1, 7
#: Per block summed over the model: blocks with attention, query heads, KV heads, blocks with
#: an MLP, channels; then the measured seconds.
Points = list[tuple[list[float], float]]
#: What every block keeps in a variant: (query heads, KV heads) or None, channels or None.
Width = tuple[tuple[int, int] | None, int | None]


@dataclass(frozen=True)
class LatencyShape:
    """A prefill call (``batch x seqlen`` tokens) or a decode step with ``seqlen`` cached."""

    kind: Literal["prefill", "decode"]
    batch: int
    seqlen: int  # prefill: tokens per sequence; decode: the prompt before the timed steps
    new_tokens: int = 0  # decode: steps timed after the prompt (the context grows over them)
    weight: float = 1.0  # share of this shape in a job's mix of shapes

    @property
    def name(self) -> str:
        if self.kind == "prefill":
            return f"{self.batch}x{self.seqlen}"
        return f"decode {self.seqlen}+{self.new_tokens}"

    @property
    def positions(self) -> int:
        """The longest sequence the shape runs (checked against the context length)."""
        return self.seqlen + self.new_tokens

    @property
    def context(self) -> int:
        """Keys a decode step attends to on average over the timed steps."""
        return self.seqlen + (self.new_tokens + 1) // 2


@dataclass(frozen=True)
class SubLayerFit:
    """Seconds per call per unit, per unit group (KV head) and fixed (the rest)."""

    per_unit: float
    per_group: float
    fixed: float


@dataclass(frozen=True)
class ShapeProfile:
    """What was measured at one shape: the sub-layer fits, the model's time, its head part.

    The fixed part (the model's time beyond its fitted sub-layers) is derived where the
    sub-layers are priced, schedules/targets.py.
    """

    shape: LatencyShape
    attention: SubLayerFit
    mlp: SubLayerFit
    model_s: float  # the model's measured seconds per call (prefill) or per step (decode)
    head_s: float  # embedding, final norm and LM head, timed on their own


def fit(points: Points) -> list[float]:
    """Least-squares ``[intercept, *slopes]`` of ``y = intercept + slopes . x``."""
    x = torch.tensor([[1.0, *features] for features, _ in points], dtype=torch.float64)
    y = torch.tensor([[value] for _, value in points], dtype=torch.float64)
    return torch.linalg.lstsq(x, y).solution.flatten().tolist()


def fit_sublayers(points: Points, where: str) -> tuple[SubLayerFit, SubLayerFit]:
    """Fit both sub-layers from whole-model times; refuse one where units cost nothing."""
    _, attention_fixed, per_head, per_kv, mlp_fixed, per_channel = fit(points)
    if per_head <= 0 or per_channel <= 0:
        raise PrunelabError(
            f"A latency profile is not possible at {where}: the measured time does not grow "
            f"with the number of heads ({per_head:.3g} s per head) or channels "
            f"({per_channel:.3g} s per channel); the timings are too noisy or too small. Use "
            "schedule.target=macs, or larger schedule.target_shapes.")
    # Fixed costs and the per-KV-head share may fit slightly negative from noise; a unit or a
    # removed sub-layer never makes the model slower, so they are floored at zero.
    return (SubLayerFit(per_head, max(per_kv, 0.0), max(attention_fixed, 0.0)),
            SubLayerFit(per_channel, 0.0, max(mlp_fixed, 0.0)))


def widest(adapter: ModelAdapter) -> LayerGeometry:
    """The block geometry the variants' widths are chosen from (narrower blocks keep all)."""
    return max((layer.geometry for layer in adapter.layers),
               key=lambda g: (g.num_heads, g.intermediate_size))


def variant_widths(geometry: LayerGeometry) -> list[Width]:
    """Widths timed besides the model: narrower attention, narrower MLP, sub-layers gone.

    Narrower attention keeps the MLP whole and the reverse; then no attention, no MLP, neither.
    """
    kv, group, ffn = geometry.num_kv_heads, geometry.num_heads // geometry.num_kv_heads, \
        geometry.intermediate_size
    dense_heads = (geometry.num_heads, kv)
    # fewer heads per KV group, and fewer groups: per-head and per-KV-head times apart
    heads = sorted({(kv * max(1, group // 2), kv), (group * max(1, kv // 2), max(1, kv // 2))}
                   - {dense_heads})
    if len(heads) < 2:  # one KV head, or one head per group: vary the heads alone
        heads = sorted({(h, min(h, kv)) for h in {max(1, geometry.num_heads // 2), 1}}
                       - {dense_heads})
    channels = sorted({ffn // 2, max(1, ffn // 4)} - {ffn})
    return ([(h, ffn) for h in heads] + [(dense_heads, c) for c in channels]
            + [(None, ffn), (dense_heads, None), (None, None)])


def _kept_heads(layer: LayerAdapter, width: tuple[int, int] | None) -> list[int]:
    """Of the first ``kv`` KV heads, the first ``query // kv`` query heads each."""
    if width is None:
        return []
    query, kv = width
    groups: dict[int, list[int]] = {}
    for head, group in enumerate(layer.kv_head_of()):
        groups.setdefault(group, []).append(head)
    return sorted(h for g in sorted(groups)[:kv] for h in groups[g][:query // kv])


def variant_plan(adapter: ModelAdapter, width: Width) -> PruningPlan:
    """Every block keeps the same heads and channels (as many as it has)."""
    heads, channels = width
    return PruningPlan([LayerPlan(_kept_heads(layer, heads),
                                  list(range(min(channels or 0,
                                                 layer.geometry.intermediate_size))))
                        for layer in adapter.layers])


def plan_features(adapter: ModelAdapter, plan: PruningPlan) -> list[float]:
    """Blocks with attention, query heads, KV heads, blocks with an MLP, channels."""
    features = [0.0] * 5
    for layer, keep in zip(adapter.layers, plan.layers):
        kv_of = layer.kv_head_of()
        for i, value in enumerate((bool(keep.heads), len(keep.heads),
                                   len({kv_of[h] for h in keep.heads}), bool(keep.channels),
                                   len(keep.channels))):
            features[i] += value
    return features


def dense_plan(adapter: ModelAdapter) -> PruningPlan:
    """The plan that keeps everything (the model itself)."""
    return PruningPlan([LayerPlan(list(range(layer.geometry.num_heads)) if layer.has_attention
                                  else [], list(range(layer.geometry.intermediate_size))
                                  if layer.has_mlp else []) for layer in adapter.layers])


def check_decode_path(model: torch.nn.Module, device: torch.device) -> None:
    """Refuse a decode profile for a model whose forward returns no KV cache."""
    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device),
                    use_cache=True)
    if getattr(out, "cache", None) is None:
        raise PrunelabError(
            f"schedule.target=latency_decode needs a model with a KV cache path, but "
            f"{type(model).__name__} returned no cache for use_cache=True. Use "
            "schedule.target=latency (prefill) for this model.")


def timed_call(model: torch.nn.Module, device: torch.device, shape: LatencyShape,
               vocab_size: int) -> Callable[[], float]:
    """One timed run of ``model`` at ``shape``: seconds per call (prefill) or decode step.

    Timed as eval/speed.py times it, on seeded random tokens.
    """
    g = torch.Generator().manual_seed(0)
    if shape.kind == "prefill":
        ids = torch.randint(vocab_size, (shape.batch, shape.seqlen), generator=g).to(device)
        return prefill_call(model, ids, device)
    prompt = torch.randint(vocab_size, (shape.batch, shape.seqlen), generator=g).to(device)
    return lambda: decode_steps(model, prompt, shape.new_tokens, device) / shape.new_tokens


@torch.no_grad()
def head_seconds(adapter: ModelAdapter, device: torch.device, shape: LatencyShape,
                 vocab_size: int) -> float:
    """Median seconds of the embedding, final norm and LM head alone at ``shape``."""
    tokens = shape.seqlen if shape.kind == "prefill" else 1
    ids = torch.randint(vocab_size, (shape.batch, tokens),
                        generator=torch.Generator().manual_seed(0)).to(device)
    embed, norm, head = adapter.embed_tokens, adapter.final_norm, adapter.lm_head
    return statistics.median(time_calls(lambda: head(norm(embed(ids))), device, WARMUP,
                                        REPEATS))


@torch.no_grad()
def measure_variants(model: torch.nn.Module, adapter: ModelAdapter, device: torch.device,
                     shape: LatencyShape, vocab_size: int) -> tuple[Points, float]:
    """Whole-model seconds of the model and its uniform-width variants, with their features.

    Features are :func:`plan_features`. Each variant (made by surgery, one at a time) is timed
    interleaved with the model, and its seconds are the model's median seconds times the
    median paired ratio, so drift of the machine's speed over the minutes a profile takes
    cancels. The model's own median seconds are returned as well.
    """
    if shape.kind == "decode":
        check_decode_path(model, device)
    reference = timed_call(model, device, shape, vocab_size)
    for _ in range(WARMUP):
        reference()
    widths = variant_widths(widest(adapter))
    log.info("Profiling latency at %s: the model and %d narrower variants", shape.name,
             len(widths))
    pairs: list[tuple[list[float], float]] = []
    model_times: list[float] = []
    for width in tqdm(widths, desc=f"latency profile {shape.name}", unit="variant",
                      leave=False):
        plan = variant_plan(adapter, width)
        variant = timed_call(prune_model(model, adapter, plan), device, shape, vocab_size)
        for _ in range(WARMUP):  # the model is warm already
            variant()
        times = interleaved_times({"model": reference, "variant": variant}, 0, REPEATS)
        del variant
        model_times += times["model"]
        pairs.append((plan_features(adapter, plan), statistics.median(
            v / m for v, m in zip(times["variant"], times["model"]))))
    model_s = statistics.median(model_times)
    dense = (plan_features(adapter, dense_plan(adapter)), model_s)
    return [dense] + [(features, ratio * model_s) for features, ratio in pairs], model_s


def _geometry_key(adapter: ModelAdapter, vocab_size: int) -> list[Any]:
    return [vocab_size, [[layer.has_attention, layer.has_mlp, asdict(layer.geometry)]
                         for layer in adapter.layers]]


def shape_profile(model: torch.nn.Module, adapter: ModelAdapter, device: torch.device,
                  shape: LatencyShape, vocab_size: int, cache_dir: str | Path) -> ShapeProfile:
    """The cached profile of ``model`` at ``shape`` on this device, measured on first use."""
    dtype = next(model.parameters()).dtype
    settings = {"version": PROFILE_VERSION, "device": _device_name(device), "dtype": str(dtype),
                "threads": torch.get_num_threads(), "shape": asdict(shape) | {"weight": 1.0},
                "model": _geometry_key(adapter, vocab_size)}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "latency" / f"{key}.json"
    where = f"{shape.name} on {settings['device']}"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            attention, mlp = fit_sublayers(saved["points"], where)
            return ShapeProfile(shape, attention, mlp, saved["model_s"], saved["head_s"])
        except (ValueError, KeyError, TypeError) as err:
            log.warning("Latency profile %s is damaged (%s: %s): measuring it again", path,
                        type(err).__name__, err)
    log.info("Latency profile at %s is measured once and cached in %s", where, path)
    points, model_s = measure_variants(model, adapter, device, shape, vocab_size)
    attention, mlp = fit_sublayers(points, where)
    head_s = head_seconds(adapter, device, shape, vocab_size)
    write_text_atomic(path, json.dumps({"settings": settings, "points": points,
                                        "model_s": model_s, "head_s": head_s,
                                        "fit": {"attention": asdict(attention),
                                                "mlp": asdict(mlp)}}, indent=1))
    return ShapeProfile(shape, attention, mlp, model_s, head_s)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"
