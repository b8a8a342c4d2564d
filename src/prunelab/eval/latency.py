"""Unit-cost profile: measured time per token of attention and MLP sub-layers by width.

On the running device and dtype, an attention sub-layer (RMSNorm, q/k/v projections, causal
scaled-dot-product attention with grouped KV heads, o projection) is timed at several
(query heads, KV heads) widths and an MLP sub-layer (RMSNorm, gate/up, SiLU, down) at several
channel counts; least squares fits ``t = fixed + per_head * heads + per_kv * kv_heads`` and
``t = fixed + per_channel * channels``. The fit prices units for ``schedule.target=latency``;
it is cached per (device, dtype, geometry, seqlen, batch, threads), so it is measured once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunelab.atomic import write_text_atomic
from prunelab.errors import PrunelabError
from prunelab.eval.speed import time_calls
from prunelab.models.adapters import LayerGeometry

log = logging.getLogger(__name__)
PROFILE_VERSION = 1


@dataclass(frozen=True)
class SubLayerFit:
    """Seconds per token per unit, per unit group (KV head) and fixed (the rest)."""

    per_unit: float
    per_group: float
    fixed: float


@dataclass(frozen=True)
class LatencyProfile:
    """Fitted seconds per token of the two sub-layer kinds, and where they were measured."""

    attention: SubLayerFit
    mlp: SubLayerFit
    settings: dict[str, Any]


def fit(points: list[tuple[list[float], float]]) -> list[float]:
    """Least-squares ``[intercept, *slopes]`` of ``y = intercept + slopes . x``."""
    x = torch.tensor([[1.0, *features] for features, _ in points], dtype=torch.float64)
    y = torch.tensor([[value] for _, value in points], dtype=torch.float64)
    return torch.linalg.lstsq(x, y).solution.flatten().tolist()


def profile_from_points(attention: list[tuple[list[float], float]],
                        mlp: list[tuple[list[float], float]],
                        settings: dict[str, Any]) -> LatencyProfile:
    """Fit both sub-layers; refuse a profile in which more units do not cost more time."""
    a0, per_head, per_kv = fit(attention)
    b0, per_channel = fit(mlp)
    if per_head <= 0 or per_channel <= 0:
        raise PrunelabError(
            f"A latency profile is not possible on {settings.get('device')}: the measured time "
            f"does not grow with the number of heads ({per_head:.3g} s/token per head) or "
            f"channels ({per_channel:.3g} s/token per channel); the timings are too noisy or "
            "too small. Use schedule.target=macs, or a larger schedule.target_seqlen / "
            "target_batch.")
    # Fixed costs and the per-KV-head share may fit slightly negative from noise; a unit or a
    # removed sub-layer never makes the model slower, so they are floored at zero.
    return LatencyProfile(SubLayerFit(per_head, max(per_kv, 0.0), max(a0, 0.0)),
                          SubLayerFit(per_channel, 0.0, max(b0, 0.0)), settings)


def _median_time(fn: Callable[[], Any], device: torch.device, warmup: int,
                 repeats: int) -> float:
    return statistics.median(time_calls(fn, device, warmup, repeats))


@torch.no_grad()
def measure_points(geometry: LayerGeometry, device: torch.device, dtype: torch.dtype,
                   seqlen: int, batch: int, repeats: int = 5
                   ) -> tuple[list[tuple[list[float], float]], list[tuple[list[float], float]]]:
    """Seconds per token of attention at (heads, kv_heads) widths and MLP at channel counts."""
    d, hd = geometry.hidden_size, geometry.head_dim
    heads, kv, ffn = geometry.num_heads, geometry.num_kv_heads, geometry.intermediate_size
    group = heads // kv
    tokens = batch * seqlen
    g = torch.Generator().manual_seed(0)

    def weight(rows: int, cols: int) -> torch.Tensor:
        return (torch.randn(rows, cols, generator=g) / cols ** 0.5).to(device, dtype)

    x = torch.randn(batch, seqlen, d, generator=g).to(device, dtype)
    norm_w = torch.ones(d, device=device, dtype=dtype)
    attention = []
    for k in sorted({kv, max(1, kv // 2), 1}):
        for per_group in sorted({group, max(1, group // 2)}):
            h = k * per_group
            wq, wk, wv, wo = weight(h * hd, d), weight(k * hd, d), weight(k * hd, d), \
                weight(d, h * hd)

            def attn(h=h, k=k, wq=wq, wk=wk, wv=wv, wo=wo):
                n = F.rms_norm(x, (d,), norm_w)
                q = F.linear(n, wq).view(batch, seqlen, h, hd).transpose(1, 2)
                key = F.linear(n, wk).view(batch, seqlen, k, hd).transpose(1, 2)
                value = F.linear(n, wv).view(batch, seqlen, k, hd).transpose(1, 2)
                out = F.scaled_dot_product_attention(q, key, value, is_causal=True,
                                                     enable_gqa=True)
                return F.linear(out.transpose(1, 2).reshape(batch, seqlen, h * hd), wo)

            attention.append(([h, k], _median_time(attn, device, 2, repeats) / tokens))
    mlp = []
    for c in sorted({ffn, 3 * ffn // 4, ffn // 2, max(1, ffn // 4)}):
        wg, wu, wd = weight(c, d), weight(c, d), weight(d, c)

        def block(wg=wg, wu=wu, wd=wd):
            n = F.rms_norm(x, (d,), norm_w)
            return F.linear(F.silu(F.linear(n, wg)) * F.linear(n, wu), wd)

        mlp.append(([c], _median_time(block, device, 2, repeats) / tokens))
    return attention, mlp


def latency_profile(geometry: LayerGeometry, device: torch.device, dtype: torch.dtype,
                    seqlen: int, batch: int, cache_dir: str | Path) -> LatencyProfile:
    """The cached profile for this device and geometry, measured on first use."""
    settings = {"version": PROFILE_VERSION, "device": _device_name(device), "dtype": str(dtype),
                "geometry": asdict(geometry), "seqlen": seqlen, "batch": batch,
                "threads": torch.get_num_threads()}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "latency" / f"{key}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            return profile_from_points(saved["attention"], saved["mlp"], settings)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("Latency profile %s is damaged (%s: %s): measuring it again", path,
                        type(err).__name__, err)
    log.info("Profiling sub-layer latency on %s (cached in %s)", settings["device"], path)
    attention, mlp = measure_points(geometry, device, dtype, seqlen, batch)
    profile = profile_from_points(attention, mlp, settings)
    write_text_atomic(path, json.dumps({"settings": settings, "attention": attention, "mlp": mlp,
                                        "fit": {"attention": asdict(profile.attention),
                                                "mlp": asdict(profile.mlp)}}, indent=1))
    return profile


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"
