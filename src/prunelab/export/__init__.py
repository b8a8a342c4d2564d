"""Export of pruned models to other runtimes: GGUF files for llama.cpp's ``deci`` graph."""

from prunelab.export.deci import DeciModel, GroupLayout, deci_model, even_groups
from prunelab.export.writer import TENSOR_TYPES, ExportReport, export_gguf

__all__ = ["TENSOR_TYPES", "DeciModel", "ExportReport", "GroupLayout", "deci_model",
           "even_groups", "export_gguf"]
