"""Hand-made results records for table and plot tests (no job has to run)."""

from __future__ import annotations

from prunelab.record import (
    DecodeTiming,
    Evaluation,
    JobInfo,
    MethodInfo,
    Metrics,
    ModelInfo,
    ParameterCounts,
    Parameters,
    PerplexityResult,
    PrefillTiming,
    PruningInfo,
    ResultsRecord,
    SpeedResult,
    SpeedUp,
    WandbInfo,
)


def timing(cls: type, seconds: float, tokens: int, **shape: int):
    """One timing of ``tokens`` tokens taking ``seconds`` every repeat."""
    return cls(median_s=seconds, min_s=seconds, max_s=seconds, times_s=[seconds], tokens=tokens,
               tokens_per_s=tokens / seconds, peak_memory_bytes=0, macs_per_token={}, **shape)


def record(method: str, ratio: float, ppl: float, prefill_ms: float | None = None,
           decode_tokens_per_s: float | None = None,
           speedup: tuple[float, float, float] | None = None, **method_params) -> ResultsRecord:
    """A complete job of ``method`` at ``ratio`` with one WikiText2 perplexity (and speed).

    ``speedup`` (ratio, low, high) is the prefill speed-up over a dense reference timed
    beside it; an empty tuple is a dense job timed under that protocol (no speed-up).
    """
    speed = None
    if prefill_ms is not None:
        prefill = timing(PrefillTiming, prefill_ms / 1000, 512, batch=1, seqlen=512)
        if speedup:
            prefill.speedup = SpeedUp(*speedup, confidence=0.95, repeats=10)
        speed = SpeedResult(
            prefill={"1x512": prefill},
            settings={} if speedup is None else {"reference": "dense", "confidence": 0.95},
            decode=None if decode_tokens_per_s is None else timing(
                DecodeTiming, 16 / decode_tokens_per_s, 16, prompt=32, new_tokens=16))
    ppl_result = PerplexityResult(ppl=ppl, mean_nll=0.0, windows=1, predicted_tokens=127,
                                  wall_time_s=0.0, dataset="wikitext2", split="test",
                                  source="test", rows=1, seqlen=128, joiner="\n\n",
                                  max_windows=None, documents=None, metric="token_perplexity")
    counts = ParameterCounts(1000, 2000)
    return ResultsRecord(
        job=JobInfo("test", method, None, "0", "out", "t0", "t1"),
        config={"model": {"name": "tiny"}, "benchmark": {"name": "test"},
                "method": {"name": method, **method_params},
                "schedule": {"name": "global", "ratio": ratio}},
        environment={}, model=ModelInfo("tiny", "random", "llama", "cpu", "float32", 0.0),
        method=MethodInfo(method, {"name": method}), schedule=None,
        parameters=Parameters(counts, counts),
        pruning=PruningInfo(ratio, ratio, ratio, {"total": 0.0}, {}, {},
                            None if ratio == 0 else {"layers": []}),
        layers=[], layers_before=[], metrics=Metrics({"wikitext2": ppl_result}, speed=speed),
        evaluation=Evaluation(0.0, {}), wandb=WandbInfo(None, None))
