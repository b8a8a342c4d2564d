"""Write a (pruned) model as a GGUF file in llama.cpp's ``deci`` architecture.

The tensors come from :func:`prunelab.export.deci.deci_model`; the tokenizer and chat template
are the ``tokenizer.*`` fields of a GGUF of the source model, copied as they are (the embedded
SmolLM2 GGUF carries them). ``f32`` and ``f16`` are written directly (1-D tensors, norms and
biases, stay f32 as llama.cpp's converters keep them); ``q8_0`` and ``q4_k_m`` are llama.cpp's
own quantisations of the f32 file, through llama-cpp-python.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from prunelab.errors import PrunelabError
from prunelab.export.deci import DeciModel, check_representable, deci_model, rope_theta
from prunelab.export.llamacpp import quantize
from prunelab.models.adapters import ModelAdapter

log = logging.getLogger(__name__)

ARCH = "deci"
#: Tensor types an export can write: written directly, or quantised by llama.cpp.
DIRECT_TYPES = ("f32", "f16")
QUANTIZED_TYPES = ("q8_0", "q4_k_m")
TENSOR_TYPES = DIRECT_TYPES + QUANTIZED_TYPES


@dataclass
class ExportReport:
    """What an export wrote and what its identities cost."""

    path: str
    tensor_type: str
    size_bytes: int
    layers: list[dict] = field(default_factory=list)
    padding_heads: int = 0
    repeated_kv_heads: int = 0
    zero_mlps: int = 0
    zero_heads: int = 0
    #: MACs per token (at the pricing context) added by padding and stand-in sub-layers
    overhead_macs: float = 0.0


def export_gguf(adapter: ModelAdapter, out: Path, tensor_type: str = "f32",
                vocab_gguf: Path | None = None, name: str = "prunelab",
                context: float = 512.0) -> ExportReport:
    """Write ``adapter``'s model to ``out``; ``vocab_gguf`` supplies the tokenizer fields.

    Without ``vocab_gguf`` the file has no tokenizer (``tokenizer.ggml.model = none``): it runs
    on token ids only, which is what parity tests of random models need, but llama.cpp's tools
    cannot tokenise a prompt for it.
    """
    if tensor_type not in TENSOR_TYPES:
        raise PrunelabError(f"Unknown GGUF tensor type {tensor_type!r}. "
                            f"Choose one of: {', '.join(TENSOR_TYPES)}.")
    config = adapter.config
    _check_family(config)
    check_representable(config)
    model = deci_model(adapter, context)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if tensor_type in DIRECT_TYPES:
        _write(model, config, out, tensor_type, vocab_gguf, name)
    else:
        staging = out.with_name(out.name + ".f32.tmp")
        try:
            _write(model, config, staging, "f32", vocab_gguf, name)
            quantize(staging, out, tensor_type)
        finally:
            staging.unlink(missing_ok=True)
    report = ExportReport(str(out), tensor_type, out.stat().st_size,
                          overhead_macs=model.overhead_macs(adapter, context))
    for layer in model.layers:
        layout = layer.layout
        report.layers.append({"n_head": layer.n_head, "n_head_kv": layer.n_head_kv,
                              "n_ff": layer.n_ff,
                              "padding_heads": layout.padding_heads if layout else 0,
                              "repeated_kv_heads": layout.repeated_kv_heads if layout else 0,
                              "zero_head": layer.zero_head, "zero_mlp": layer.zero_mlp})
        if layout is not None and not layer.zero_head:
            report.padding_heads += layout.padding_heads
            report.repeated_kv_heads += layout.repeated_kv_heads
        report.zero_mlps += layer.zero_mlp
        report.zero_heads += layer.zero_head
    return report


#: Families whose blocks llama.cpp's deci graph cannot express, and why.
_NOT_DECI = {
    family: "Gemma-3 blocks (a norm after the attention and after the MLP, per-head q/k "
            "norms, a GeGLU MLP, sliding-window layers) have no counterpart in llama.cpp's "
            "deci graph, the one llama.cpp architecture that reads a head count and MLP "
            "width per layer, so a pruned Gemma-3 cannot be written for it. The saved folder "
            "runs with transformers (model=local model.path=<job>/model); an unpruned "
            "Gemma-3 converts with llama.cpp's own convert_hf_to_gguf.py."
    for family in ("gemma3_text", "prunelab_gemma3")}


def _check_family(config) -> None:
    """Dense models of other families belong to llama.cpp's own converter and architecture."""
    family = config.model_type
    if family in _NOT_DECI:
        raise PrunelabError(_NOT_DECI[family])
    if family not in ("llama", "prunelab_llama"):
        raise PrunelabError(
            f"An unpruned {family} model is not exported by prunelab: llama.cpp has its own "
            f"architecture for it. Convert the Hugging Face folder with llama.cpp's "
            "convert_hf_to_gguf.py (it ships with llama.cpp and llama-cpp-python's sources).")


def _write(model: DeciModel, config, path: Path, tensor_type: str, vocab_gguf: Path | None,
           name: str) -> None:
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if tensor_type == "f32"
                         else gguf.LlamaFileType.MOSTLY_F16)
    layers = model.layers
    writer.add_block_count(len(layers))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length([layer.n_ff for layer in layers])
    writer.add_head_count([layer.n_head for layer in layers])
    writer.add_head_count_kv([layer.n_head_kv for layer in layers])
    # Explicit: llama.cpp would otherwise derive the head size from layer 0's head count.
    writer.add_key_length(model.head_dim)
    writer.add_value_length(model.head_dim)
    writer.add_rope_dimension_count(model.head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    vocab_size = model.tensors["token_embd.weight"].shape[0]
    writer.add_vocab_size(vocab_size)
    if vocab_gguf is None:
        writer.add_tokenizer_model("none")
    else:
        copy_tokenizer(writer, Path(vocab_gguf), vocab_size)
    for tensor_name, tensor in model.tensors.items():
        writer.add_tensor(tensor_name, _as_numpy(tensor, tensor_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def _as_numpy(tensor: torch.Tensor, tensor_type: str) -> np.ndarray:
    array = tensor.detach().cpu().float().contiguous().numpy()
    if tensor_type == "f16" and array.ndim > 1:
        return array.astype(np.float16)
    return array


def copy_tokenizer(writer, source: Path, vocab_size: int) -> None:
    """Copy every ``tokenizer.*`` field of the GGUF ``source`` into ``writer``.

    That is the vocabulary, merges, special tokens and chat template; the vocabulary must
    have one token per embedding row of the model.
    """
    if not source.is_file():
        raise PrunelabError(f"The tokenizer source {str(source)!r} does not exist. Pass a GGUF "
                            "of the model the pruned one came from.")
    reader = gguf.GGUFReader(str(source))
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    if "tokenizer.ggml.model" not in fields:
        raise PrunelabError(f"{source} has no tokenizer fields (tokenizer.ggml.*). Pass a GGUF "
                            "made by llama.cpp's converter from the source model.")
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens.data) != vocab_size:
        raise PrunelabError(f"{source} has {len(tokens.data)} tokens but the model has "
                            f"{vocab_size} embedding rows: it is not this model's tokenizer.")
    for key, value in fields.items():
        kind = value.types[0]
        sub = value.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value.contents(), kind, sub_type=sub)
