"""llama.cpp through llama-cpp-python: quantisation, logits and perplexity of a GGUF.

llama-cpp-python is an optional dependency (it compiles llama.cpp from source); every entry
point here imports it through :func:`require_llama_cpp`, which says how to install it.
Parity checks use an f32 KV cache: llama.cpp's default f16 cache alone moves logits by about
2e-2, which would hide an export error of that size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from prunelab.errors import PrunelabError

#: The llama-cpp-python release the export is tested with (it vendors the deci graph).
LLAMA_CPP_SPEC = "llama-cpp-python==0.3.36"
INSTALL_HINT = (f"pip install '{LLAMA_CPP_SPEC}' (it builds llama.cpp from source with cmake and "
                "a C++ compiler: about 10 minutes on 2 cores), or bash scripts/setup.sh "
                "--llama-cpp")
#: llama.cpp's ``LLAMA_FTYPE_*`` of the quantised types (llama.h)
FTYPES = {"q8_0": 7, "q4_k_m": 15}
GGML_TYPE_F32 = 0


def require_llama_cpp():
    """The ``llama_cpp`` module, or one error that gives the install command."""
    try:
        import llama_cpp
    except ImportError as err:
        raise PrunelabError(f"This needs llama-cpp-python, which is not installed: "
                            f"{INSTALL_HINT}.") from err
    return llama_cpp


def quantize(source: Path, target: Path, tensor_type: str, threads: int | None = None) -> None:
    """llama.cpp's own quantisation of the GGUF ``source`` into ``target``."""
    llama_cpp = require_llama_cpp()
    if tensor_type not in FTYPES:
        raise PrunelabError(f"llama.cpp quantisation type {tensor_type!r} is not one of "
                            f"{', '.join(FTYPES)}.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[tensor_type]
    params.nthread = threads or os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        raise PrunelabError(f"llama.cpp could not quantise {source} to {tensor_type} "
                            f"(status {status}); its log above says why.")


def open_gguf(path: Path, n_ctx: int, threads: int = 2, f32_cache: bool = True,
              batch: int | None = None, all_logits: bool = True):
    """A ``llama_cpp.Llama`` over ``path`` (with an f32 KV cache unless told otherwise)."""
    llama_cpp = require_llama_cpp()
    kwargs = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_cache else {}
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=batch or n_ctx,
                           n_ubatch=batch or n_ctx, n_threads=threads, n_threads_batch=threads,
                           logits_all=all_logits, verbose=False, **kwargs)


def logits(llm, ids: list[int]) -> np.ndarray:
    """``[len(ids), vocab]`` logits of one sequence, from an empty KV cache."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def perplexity(llm, windows: np.ndarray) -> float:
    """PPL over ``[n, seqlen]`` windows with prunelab's protocol (eval/perplexity.py).

    Every window runs from an empty cache; PPL is exp of the mean NLL of every predicted
    token, accumulated in float64.
    """
    total, count = 0.0, 0
    for window in windows:
        scores = logits(llm, window.tolist()).astype(np.float64)
        shifted = scores[:-1]
        peak = shifted.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted - peak).sum(axis=1)) + peak[:, 0]
        targets = window[1:]
        total += float((log_norm - shifted[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    return math.exp(total / count)

