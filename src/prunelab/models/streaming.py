"""Weights streamed from a safetensors folder: modules hold memory only while they run.

A streamed model is built with accelerate's ``init_empty_weights`` (parameters on the meta
device, so building costs nothing; buffers such as rotary frequencies stay real), and its
files are opened with safetensors' ``safe_open`` (memory-mapped, each tensor read on
demand). :meth:`WeightStore.materialized` reads one module's tensors for the duration of a
``with`` block and puts them back on the meta device after, so the pruning stage holds one
block (or the embeddings) at a time.

Why not accelerate's offload hooks (``disk_offload``)? They load a module on every forward
call of a whole-model forward, which suits generation; here one block runs over every sample
before the next is read, the stage decides when a block lives, and what is resident is
counted (:attr:`WeightStore.peak_blocks`), which the tests hold to one.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate.utils import set_module_tensor_to_device
from safetensors import safe_open
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.integrity import check_finite

_BLOCK = re.compile(r"layers\.(\d+)$")
#: Largest read of one tensor per opening of its file (see :meth:`WeightStore.tensors`).
READ_CHUNK_BYTES = 16 * 2**20
_ELEMENT_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2,
                  "U8": 1, "I8": 1, "BOOL": 1}


class WeightStore:
    """The tensors of a model folder, read into a module's parameters on request."""

    def __init__(self, model: nn.Module, folder: Path, dtype: torch.dtype):
        self.model, self.dtype = model, dtype
        index = folder / "model.safetensors.index.json"
        files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
                 if index.is_file() else [p.name for p in sorted(folder.glob("*.safetensors"))])
        if not files:
            raise PrunelabError(f"{folder} holds no safetensors file to stream weights from.")
        self._where: dict[str, Path] = {}
        for name in files:
            with safe_open(str(folder / name), framework="pt", device="cpu") as handle:
                self._where.update({key: folder / name for key in handle.keys()})
        self._names = {module: name for name, module in model.named_modules()}
        self._aliases = _tied_aliases(model)
        self.resident_blocks: set[int] = set()
        self.peak_blocks = 0
        self.materializations = 0

    def tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The stored tensors ``names`` (a tied weight is read under the name it is saved as).

        ``safe_open`` maps the file, and the mapped pages a read touches count in the
        process's resident memory until the file is closed. So files are opened per read,
        and a tensor larger than :data:`READ_CHUNK_BYTES` (an embedding) is read a chunk of
        rows per opening: what a read adds is the tensor plus one chunk, not twice the tensor.
        """
        keys = {name: name if name in self._where else self._aliases.get(name, name)
                for name in names}
        unknown = [name for name, key in keys.items() if key not in self._where]
        if unknown:
            raise PrunelabError(f"The streamed model's files hold no tensor {unknown[0]!r}: "
                                "they do not match the model's config.")
        return {name: self._read(key) for name, key in keys.items()}

    def _read(self, key: str) -> torch.Tensor:
        path = str(self._where[key])
        with safe_open(path, framework="pt", device="cpu") as handle:
            stored = handle.get_slice(key)
            shape, dtype = stored.get_shape(), stored.get_dtype()
            row_bytes = math.prod(shape[1:]) * _ELEMENT_BYTES.get(dtype, 8)
            if not shape or shape[0] * row_bytes <= READ_CHUNK_BYTES:
                return handle.get_tensor(key)
        rows = max(1, READ_CHUNK_BYTES // row_bytes)
        out: torch.Tensor | None = None
        for first in range(0, shape[0], rows):
            with safe_open(path, framework="pt", device="cpu") as handle:
                part = handle.get_slice(key)[first:first + rows]
            if out is None:
                out = torch.empty(shape, dtype=part.dtype)
            out[first:first + part.shape[0]] = part
        return out

    @contextlib.contextmanager
    def materialized(self, *modules: nn.Module, device: torch.device | str = "cpu"
                     ) -> Iterator[None]:
        """Real weights in ``modules`` (on ``device``) inside the block, meta tensors after."""
        loaded: list[tuple[nn.Module, str]] = []
        blocks = {self._block_index(m) for m in modules} - {None}
        try:
            for module in modules:
                prefix = self._names[module]
                prefix = f"{prefix}." if prefix else ""
                params = [n for n, _ in module.named_parameters()]
                stored = self.tensors([prefix + n for n in params])
                check_finite(stored.items())
                for n in params:
                    set_module_tensor_to_device(module, n, device,
                                                value=stored.pop(prefix + n).to(self.dtype))
                    loaded.append((module, n))
            self.materializations += 1
            self.resident_blocks |= blocks
            self.peak_blocks = max(self.peak_blocks, len(self.resident_blocks))
            yield
        finally:
            for module, n in loaded:
                set_module_tensor_to_device(module, n, "meta")
            if self._aliases:  # releasing made new meta parameters: tie them again
                self.model.tie_weights()
            self.resident_blocks -= blocks

    def _block_index(self, module: nn.Module) -> int | None:
        match = _BLOCK.search(self._names[module])
        return int(match.group(1)) if match else None


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """Saved names of tied parameters: a tied LM head is stored as the input embedding."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return {}
    names = {module: name for name, module in model.named_modules()}
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return {f"{names[head]}.weight": f"{names[embed]}.weight"}
