"""Checks that a model folder and its weights are sound, before anything is computed from them.

A truncated or hand-edited file otherwise surfaces as a library traceback deep in loading (or,
for NaN weights, as meaningless scores much later). Each check names the file or block and
says what to do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from prunelab.errors import CorruptFileError, NonFiniteError
from prunelab.models.plan import PLAN_FILE
from prunelab.models.pruned import check_remote_code

_OTHER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "generation_config.json")
_REMEDY = ("Copy the folder again from where it was made, or re-save the model there "
           "(save_pretrained, or a prunelab job with save_model=true).")


def corrupt(path: Path, detail: str) -> CorruptFileError:
    """The error for one unreadable file of a model folder."""
    return CorruptFileError(f"{path} is corrupt or truncated ({detail}). {_REMEDY}")


def check_model_folder(folder: Path) -> None:
    """Every file ``from_pretrained`` would read parses; a pruned folder's plan and code agree."""
    config = _read_json(folder / "config.json")
    for name in _OTHER_JSON_FILES:
        if (folder / name).is_file():
            _read_json(folder / name)
    _check_weights(folder)
    if (folder / PLAN_FILE).is_file():
        _check_plan(folder / PLAN_FILE, config)
    if config.get("auto_map"):
        check_remote_code(folder, str(config.get("model_type")))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise corrupt(path, f"{type(err).__name__}: {err}") from err
    if not isinstance(data, dict):
        raise corrupt(path, f"expected a JSON object, found {type(data).__name__}")
    return data


def _check_weights(folder: Path) -> None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise corrupt(index, f"it names shard(s) {', '.join(missing)}, which are missing")
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except Exception as err:  # safetensors raises its own Rust-side error type
            raise corrupt(path, str(err)) from err


def _check_plan(path: Path, config: dict) -> None:
    """The plan beside a pruned model must describe that model's per-layer geometry."""
    plan = _read_json(path)
    layers = plan.get("layers")
    if not isinstance(layers, list) or not all(
            isinstance(layer, dict) and isinstance(layer.get("heads"), list)
            and isinstance(layer.get("channels"), list) for layer in layers):
        raise corrupt(path, "expected {'layers': [{'heads': [...], 'channels': [...]}, ...]}")
    heads = [len(kv_map) for kv_map in config.get("layer_kv_map", [])]
    widths = config.get("layer_intermediate_sizes", [])
    if ([len(layer["heads"]) for layer in layers] != heads
            or [len(layer["channels"]) for layer in layers] != widths):
        raise corrupt(path, "its kept heads and channels do not match config.json's per-layer "
                      "geometry (layer_kv_map, layer_intermediate_sizes)")


#: Elements of a weight checked at once.
_CHECK_CHUNK = 1 << 22


def check_finite_weights(model: torch.nn.Module) -> None:
    """Refuse a model whose weights hold NaN or Inf, naming the block and tensor."""
    check_finite(model.named_parameters())


def check_finite(named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Refuse weights (``(name, tensor)`` pairs) holding NaN or Inf, naming the first."""
    for name, tensor in named:
        flat = tensor.detach().reshape(-1)  # checked in chunks: isfinite's temporaries are
        bad = sum(int((~torch.isfinite(flat[i:i + _CHECK_CHUNK])).sum())  # tensor-sized
                  for i in range(0, flat.numel(), _CHECK_CHUNK))
        if bad:
            block = re.search(r"layers\.(\d+)\.", name)
            where = f"block {block.group(1)} ({name})" if block else name
            raise NonFiniteError(
                f"The model's weight {where} holds {bad} NaN/Inf value(s): "
                "every score and measurement computed from it would be meaningless. Check the "
                "model files (copy or convert them again) and model.dtype (float32 avoids "
                "float16 overflow).")
