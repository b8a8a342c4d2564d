"""Export a saved model folder (pruned by prunelab, or dense LLaMA) to GGUF.

The tokenizer comes from a GGUF of the source model: the one named by ``--vocab-from``, else
the one the folder records (a pruned folder's plan names its source model; a converted GGUF
folder names its GGUF file).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from prunelab.config.schema import ModelConfig
from prunelab.errors import PrunelabError
from prunelab.export.writer import ExportReport, export_gguf
from prunelab.models.loading import CONVERSION_FILE, LoadedModel, load_model
from prunelab.models.plan import PLAN_FILE, SOURCE_FIELD

log = logging.getLogger(__name__)


def recorded_source_gguf(folder: Path) -> Path | None:
    """The GGUF the folder's model came from, when the folder records one that still exists."""
    for name, key, prefix in ((PLAN_FILE, SOURCE_FIELD, "gguf:"), (CONVERSION_FILE, "gguf", "")):
        record = folder / name
        if not record.is_file():
            continue
        value = json.loads(record.read_text()).get(key) or ""
        if value.startswith(prefix) and Path(value[len(prefix):]).is_file():
            return Path(value[len(prefix):])
    return None


def vocab_source(folder: Path, vocab_gguf: Path | None = None,
                 no_vocab: bool = False) -> Path | None:
    """The GGUF whose tokenizer the export of ``folder`` copies (``None`` with ``no_vocab``)."""
    if vocab_gguf is not None or no_vocab:
        return vocab_gguf
    recorded = recorded_source_gguf(folder)
    if recorded is None:
        raise PrunelabError(
            f"{folder} does not say which GGUF its tokenizer comes from. Pass --vocab-from "
            "with a GGUF of the source model (llama.cpp's convert_hf_to_gguf.py makes one "
            "from the Hugging Face folder), or --no-vocab for a file that runs on token ids.")
    log.info("Tokenizer and chat template from %s", recorded)
    return recorded


def load_folder(folder: Path) -> LoadedModel:
    """``folder``'s model on the CPU in float32, the precision the export reads."""
    return load_model(ModelConfig(name=folder.name, source="local", path=str(folder),
                                  device="cpu", dtype="float32"), cache_dir=None)


def export_folder(folder: Path, out: Path, tensor_type: str = "f32",
                  vocab_gguf: Path | None = None, no_vocab: bool = False) -> ExportReport:
    """Load ``folder`` and write it to ``out`` (see ``export_gguf``)."""
    folder = Path(folder)
    vocab = vocab_source(folder, vocab_gguf, no_vocab)
    return export_gguf(load_folder(folder).adapter, out, tensor_type, vocab, name=folder.name)
