"""Activation buffers that spill to disk when memory would exceed a budget.

Layer-wise loops (calibration, evaluation of a streamed model) keep every sample's hidden
states between blocks: ``[samples, seqlen, hidden]``, 0.6 GB for the default calibration set
on SmolLM2 (1024 x 128 x 576 float32), 8.6 GB on LLaMA-2-70B. :func:`activation_buffer`
gives an ordinary tensor when it fits the budget and a :class:`SpilledTensor` (a file read
and written one slice of rows at a time with ``preadv``/``pwrite``, so only the slice in use
is resident; the page cache is the kernel's to reclaim) when it does not.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch


class SpilledTensor:
    """A ``[rows, ...]`` tensor stored in a file; ``t[a:b]`` reads rows, ``t[a:b] = x`` writes."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, folder: str | Path):
        self._fd: int | None = None
        self.shape, self.dtype, self.device = torch.Size(shape), dtype, torch.device("cpu")
        self._row_bytes = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        Path(folder).mkdir(parents=True, exist_ok=True)
        self._fd, self.path = tempfile.mkstemp(prefix="activations-", suffix=".bin",
                                               dir=folder)
        os.ftruncate(self._fd, self._row_bytes * shape[0])

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop = self._bounds(rows)
        out = torch.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        view = out.view(torch.uint8).numpy().reshape(-1)
        done = 0
        while done < view.nbytes:  # preadv may return fewer bytes than asked
            done += os.preadv(self._fd, [view[done:]], start * self._row_bytes + done)
        return out

    def __setitem__(self, rows: slice, value: torch.Tensor) -> None:
        start, stop = self._bounds(rows)
        data = value.detach().to("cpu", self.dtype).contiguous().view(torch.uint8).numpy()
        if data.nbytes != (stop - start) * self._row_bytes:
            raise ValueError(f"rows {start}:{stop} need {stop - start} rows of "
                             f"{tuple(self.shape[1:])}, got {tuple(value.shape)}")
        data = memoryview(data.reshape(-1))
        done = 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], start * self._row_bytes + done)

    def _bounds(self, rows: slice) -> tuple[int, int]:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("a spilled tensor is read and written by contiguous row slices")
        return start, stop

    def close(self) -> None:
        """Delete the file (also when the buffer is garbage-collected)."""
        if self._fd is not None:
            os.close(self._fd)
            os.unlink(self.path)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def activation_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                      budget_bytes: int | None, folder: str | Path | None
                      ) -> torch.Tensor | SpilledTensor:
    """An empty ``shape`` buffer: in memory when it fits ``budget_bytes`` (None: always)."""
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if budget_bytes is None or size <= budget_bytes:
        return torch.empty(shape, dtype=dtype, device=device)
    return SpilledTensor(shape, dtype, folder or tempfile.gettempdir())
