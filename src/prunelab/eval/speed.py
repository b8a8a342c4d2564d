"""Inference speed of the model in memory, and its multiply-accumulates per token.

Structured pruning exists to make models faster, so speed is measured like perplexity: the
same protocol for dense and pruned models, every setting recorded. Prefill latency is timed
over a (batch, sequence length) grid, decode throughput as greedy steps with a KV cache; each
after warm-up runs, repeated, reported as median with min/max, CUDA synchronised. MACs come
from the per-layer geometry, so they give the speed-up a pruned geometry allows at most.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from tqdm.auto import tqdm

from prunelab.config.schema import SpeedSpec
from prunelab.eval.intervals import interleaved_times, paired_ratio_interval
from prunelab.meter import PhaseMeter
from prunelab.models.adapters import ModelAdapter
from prunelab.models.macs import attention_macs, mlp_macs


def macs_per_token(adapter: ModelAdapter, context: float) -> dict[str, float]:
    """Multiply-accumulates of one token's forward pass attending to ``context`` positions.

    The sub-layers follow models/macs.py; the LM head costs its weight count. A block that
    lost all its heads (or channels) costs nothing for that sub-layer.
    """
    linear = attention = 0.0
    for layer in adapter.layers:
        g = layer.geometry
        if layer.has_attention:
            projections = attention_macs(g.hidden_size, g.head_dim, g.num_heads,
                                         g.num_kv_heads, 0.0)
            linear += projections
            attention += attention_macs(g.hidden_size, g.head_dim, g.num_heads,
                                        g.num_kv_heads, context) - projections
        if layer.has_mlp:
            linear += mlp_macs(g.hidden_size, g.intermediate_size)
    head = adapter.lm_head.weight.numel()
    return {"linear": linear, "attention": attention, "lm_head": float(head),
            "total": linear + attention + head}


def timed(fn: Callable[[], Any], device: torch.device) -> Callable[[], float]:
    """A call of ``fn`` that returns the seconds it took (CUDA synchronised around it)."""
    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    return run


def prefill_call(model: torch.nn.Module, ids: torch.Tensor, device: torch.device
                 ) -> Callable[[], float]:
    """A timed prefill of ``ids``: one forward without a cache, in seconds."""
    return timed(lambda: model(input_ids=ids, use_cache=False), device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int
               ) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    return interleaved_times({"fn": timed(fn, device)}, warmup, repeats)["fn"]


def _summary(times: list[float], tokens: int) -> dict[str, Any]:
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "max_s": max(times), "times_s": times,
            "tokens": tokens, "tokens_per_s": tokens / median}


def _measurement(times: dict[str, list[float]], tokens: int, confidence: float
                 ) -> dict[str, Any]:
    """The model's summary; with a reference, its summary and the paired speed-up too."""
    summary = _summary(times["model"], tokens)
    if "reference" in times:
        summary["reference"] = _summary(times["reference"], tokens)
        summary["speedup"] = asdict(paired_ratio_interval(times["reference"], times["model"],
                                                          confidence))
    return summary


@torch.no_grad()
def measure_speed(model: torch.nn.Module, adapter: ModelAdapter, spec: SpeedSpec,
                  device: torch.device, vocab_size: int,
                  reference: torch.nn.Module | None = None) -> dict[str, Any]:
    """Prefill latency over ``spec.grid`` and decode throughput, with peak memory and MACs.

    With ``reference`` (the dense model of a pruned job), each shape and the decode times
    both models interleaved (eval/intervals.py) and records the reference's timings and the
    speed-up with its confidence interval; the peak memory then includes the resident
    reference.
    """
    models = {"model": model} if reference is None else {"model": model, "reference": reference}
    was_training = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    generator = torch.Generator().manual_seed(spec.seed)
    meter = PhaseMeter(device)
    prefill = {}
    for batch, seqlen in tqdm(spec.grid, desc="prefill", unit="shape", leave=False):
        ids = torch.randint(vocab_size, (batch, seqlen), generator=generator).to(device)
        calls = {name: prefill_call(m, ids, device) for name, m in models.items()}
        with meter.phase(f"prefill_{batch}x{seqlen}"):
            times = interleaved_times(calls, spec.warmup, spec.repeats)
        prefill[f"{batch}x{seqlen}"] = {
            "batch": batch, "seqlen": seqlen,
            **_measurement(times, batch * seqlen, spec.confidence),
            "peak_memory_bytes": meter.peak_memory_bytes[f"prefill_{batch}x{seqlen}"],
            "macs_per_token": macs_per_token(adapter, (seqlen + 1) / 2)}
    result: dict[str, Any] = {"prefill": prefill}
    if spec.decode_tokens:
        prompt = torch.randint(vocab_size, (1, spec.decode_prompt), generator=generator)
        prompt = prompt.to(device)
        calls = {name: lambda m=m: decode_steps(m, prompt, spec.decode_tokens, device)
                 for name, m in models.items()}
        with meter.phase("decode"):
            times = interleaved_times(calls, spec.warmup, spec.repeats)
        result["decode"] = {
            "prompt": spec.decode_prompt, "new_tokens": spec.decode_tokens,
            **_measurement(times, spec.decode_tokens, spec.confidence),
            "peak_memory_bytes": meter.peak_memory_bytes["decode"],
            "macs_per_token": macs_per_token(
                adapter, spec.decode_prompt + (spec.decode_tokens + 1) / 2)}
    result["settings"] = {"device": str(device), "torch_threads": torch.get_num_threads(),
                          "dtype": str(next(model.parameters()).dtype),
                          "warmup": spec.warmup, "repeats": spec.repeats,
                          "memory_kind": meter.memory_kind, "reference": spec.reference,
                          "confidence": spec.confidence}
    for name, m in models.items():
        m.train(was_training[name])
    return result


def decode_steps(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int,
                  device: torch.device) -> float:
    """Seconds for ``new_tokens`` greedy single-token steps with a KV cache after ``prompt``.

    The prompt's prefill is not timed: it is the prefill grid's subject.
    """
    out = model(input_ids=prompt, use_cache=True)
    cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, cache=cache, use_cache=True)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
