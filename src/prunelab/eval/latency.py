"""Whole-model latency profile: what the model's measured time at a declared shape is made of.

A shape is a prefill call of ``batch x seqlen`` tokens, or one decode step (one new token) with
a KV cache of ``context`` positions. At each shape, on the running device, dtype and thread
count:

* an attention sub-layer (RMSNorm, q/k/v projections, rotary embedding, the decode step's
  cache append, causal scaled-dot-product attention with grouped KV heads, o projection,
  residual add) is timed at several (query heads, KV heads) widths, and an MLP sub-layer
  (RMSNorm, gate/up, SiLU, down, residual add) at several channel counts; least squares fits
  seconds per call ``fixed + per_head * heads + per_kv * kv_heads`` and
  ``fixed + per_channel * channels``;
* the model itself is timed as the speed benchmark times it (eval/speed.py: a forward without
  cache; decode steps after an untimed prompt), so the profile's total is the model's measured
  time, not a sum of parts;
* the embedding, final norm and LM head are timed on their own (``head_s``); what the fitted
  sub-layers do not explain of the model's time is its fixed part (schedules/targets.py).

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
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from prunelab.atomic import write_text_atomic
from prunelab.errors import PrunelabError
from prunelab.eval.intervals import interleaved_times
from prunelab.eval.speed import decode_steps, time_calls
from prunelab.models.adapters import LayerGeometry, ModelAdapter

log = logging.getLogger(__name__)
PROFILE_VERSION = 2
WARMUP, REPEATS = 2, 7
Points = list[tuple[list[float], float]]


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


def fit_sublayers(attention: Points, mlp: Points, where: str) -> tuple[SubLayerFit, SubLayerFit]:
    """Fit both sub-layers; refuse a profile in which more units do not cost more time."""
    a0, per_head, per_kv = fit(attention)
    b0, per_channel = fit(mlp)
    if per_head <= 0 or per_channel <= 0:
        raise PrunelabError(
            f"A latency profile is not possible at {where}: the measured time does not grow "
            f"with the number of heads ({per_head:.3g} s per head) or channels "
            f"({per_channel:.3g} s per channel); the timings are too noisy or too small. Use "
            "schedule.target=macs, or larger schedule.target_shapes.")
    # Fixed costs and the per-KV-head share may fit slightly negative from noise; a unit or a
    # removed sub-layer never makes the model slower, so they are floored at zero.
    return (SubLayerFit(per_head, max(per_kv, 0.0), max(a0, 0.0)),
            SubLayerFit(per_channel, 0.0, max(b0, 0.0)))


def _median_time(fn: Callable[[], Any], device: torch.device) -> float:
    return statistics.median(time_calls(fn, device, WARMUP, REPEATS))


def _widths(geometry: LayerGeometry) -> tuple[list[tuple[int, int]], list[int]]:
    """(query heads, KV heads) and channel counts the fits are measured at."""
    kv, group, ffn = geometry.num_kv_heads, geometry.num_heads // geometry.num_kv_heads, \
        geometry.intermediate_size
    heads = [(k * g, k) for k in sorted({kv, max(1, kv // 2), 1})
             for g in sorted({group, max(1, group // 2)})]
    if len(heads) < 3:  # one KV head and one head per group: vary the heads alone
        heads = [(h, 1) for h in sorted({geometry.num_heads, max(1, geometry.num_heads // 2), 1})]
    channels = sorted({ffn, 3 * ffn // 4, ffn // 2, max(1, ffn // 4)})
    return heads, channels


@torch.no_grad()
def measure_sublayers(geometry: LayerGeometry, device: torch.device, dtype: torch.dtype,
                      shape: LatencyShape) -> tuple[Points, Points]:
    """Seconds per call of attention at (heads, kv_heads) widths and MLP at channel counts."""
    d, hd = geometry.hidden_size, geometry.head_dim
    batch = shape.batch
    seqlen = shape.seqlen if shape.kind == "prefill" else 1
    g = torch.Generator().manual_seed(0)

    def weight(rows: int, cols: int) -> torch.Tensor:
        return (torch.randn(rows, cols, generator=g) / cols ** 0.5).to(device, dtype)

    x = torch.randn(batch, seqlen, d, generator=g).to(device, dtype)
    cos = torch.randn(batch, seqlen, hd, generator=g).to(device, dtype)
    sin = torch.randn(batch, seqlen, hd, generator=g).to(device, dtype)
    norm_w = torch.ones(d, device=device, dtype=dtype)
    head_widths, channel_counts = _widths(geometry)
    attention = []
    for h, k in head_widths:
        wq, wk, wv, wo = weight(h * hd, d), weight(k * hd, d), weight(k * hd, d), \
            weight(d, h * hd)
        cached = [torch.randn(batch, k, shape.context, hd, generator=g).to(device, dtype)
                  for _ in range(2)] if shape.kind == "decode" else None

        def attn(h=h, k=k, wq=wq, wk=wk, wv=wv, wo=wo, cached=cached):
            n = F.rms_norm(x, (d,), norm_w)
            q = F.linear(n, wq).view(batch, seqlen, h, hd).transpose(1, 2)
            key = F.linear(n, wk).view(batch, seqlen, k, hd).transpose(1, 2)
            value = F.linear(n, wv).view(batch, seqlen, k, hd).transpose(1, 2)
            q, key = apply_rotary_pos_emb(q, key, cos, sin)
            if cached is not None:  # the cache appends this step's keys and values
                key, value = torch.cat([cached[0], key], 2), torch.cat([cached[1], value], 2)
            out = F.scaled_dot_product_attention(q, key, value, is_causal=cached is None,
                                                 enable_gqa=True)
            return x + F.linear(out.transpose(1, 2).reshape(batch, seqlen, h * hd), wo)

        attention.append(([h, k], _median_time(attn, device)))
    mlp = []
    for c in channel_counts:
        wg, wu, wd = weight(c, d), weight(c, d), weight(d, c)

        def block(wg=wg, wu=wu, wd=wd):
            n = F.rms_norm(x, (d,), norm_w)
            return x + F.linear(F.silu(F.linear(n, wg)) * F.linear(n, wu), wd)

        mlp.append(([c], _median_time(block, device)))
    return attention, mlp


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


@torch.no_grad()
def measure_model(model: torch.nn.Module, adapter: ModelAdapter, device: torch.device,
                  shape: LatencyShape, vocab_size: int) -> tuple[float, float]:
    """Seconds of the model at ``shape`` (per call or per decode step) and of its head part."""
    g = torch.Generator().manual_seed(0)
    if shape.kind == "prefill":
        ids = torch.randint(vocab_size, (shape.batch, shape.seqlen), generator=g).to(device)
        model_s = _median_time(lambda: model(input_ids=ids, use_cache=False), device)
    else:
        check_decode_path(model, device)
        ids = torch.randint(vocab_size, (shape.batch, 1), generator=g).to(device)
        prompt = torch.randint(vocab_size, (shape.batch, shape.seqlen), generator=g).to(device)
        steps = interleaved_times({"model": lambda: decode_steps(
            model, prompt, shape.new_tokens, device)}, WARMUP, REPEATS)["model"]
        model_s = statistics.median(steps) / shape.new_tokens
    embed, norm, head = adapter.embed_tokens, adapter.final_norm, adapter.lm_head
    head_s = _median_time(lambda: head(norm(embed(ids))), device)
    return model_s, head_s


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
            attention, mlp = fit_sublayers(saved["attention"], saved["mlp"], where)
            return ShapeProfile(shape, attention, mlp, saved["model_s"], saved["head_s"])
        except (ValueError, KeyError, TypeError) as err:
            log.warning("Latency profile %s is damaged (%s: %s): measuring it again", path,
                        type(err).__name__, err)
    log.info("Profiling latency at %s (cached in %s)", where, path)
    geometry = max((layer.geometry for layer in adapter.layers),
                   key=lambda g: (g.num_heads, g.intermediate_size))
    attention_points, mlp_points = measure_sublayers(geometry, device, dtype, shape)
    attention, mlp = fit_sublayers(attention_points, mlp_points, where)
    model_s, head_s = measure_model(model, adapter, device, shape, vocab_size)
    write_text_atomic(path, json.dumps({"settings": settings, "attention": attention_points,
                                        "mlp": mlp_points, "model_s": model_s, "head_s": head_s,
                                        "fit": {"attention": asdict(attention),
                                                "mlp": asdict(mlp)}}, indent=1))
    return ShapeProfile(shape, attention, mlp, model_s, head_s)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"
