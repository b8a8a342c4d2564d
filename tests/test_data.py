"""Corpora match the papers' rows; the calibration sampler is deterministic; misses are clear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunelab.data.calibration import sample_calibration
from prunelab.data.corpora import (
    Corpus,
    load_corpus,
    load_ptb,
    load_wikitext2,
    wikitext_rows_from_raw,
)
from prunelab.errors import DataMissingError, PrunelabError
from prunelab.models.tiny import byte_tokenizer


@pytest.mark.parametrize("split", ["test", "validation"])
def test_wikitext_raw_file_reproduces_hub_rows(data_dir, split):
    folder = Path(data_dir) / "wikitext-2-raw-v1"
    hub_rows = [json.loads(line)["text"] for line in open(folder / f"{split}.rows.jsonl")]
    raw_rows = wikitext_rows_from_raw((folder / f"{split}.txt").read_text())
    assert raw_rows == hub_rows
    assert "\n\n".join(raw_rows) == "\n\n".join(hub_rows)


def test_wikitext_from_raw_only_folder(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("PRUNELAB_DATA_DIR")
    (tmp_path / "wikitext-2-raw-v1").mkdir()
    source = Path(data_dir) / "wikitext-2-raw-v1" / "test.txt"
    (tmp_path / "wikitext-2-raw-v1" / "wiki.test.raw").write_text(source.read_text())
    corpus = load_wikitext2("test", str(tmp_path))
    assert corpus.source.endswith("wiki.test.raw")
    assert len(corpus.rows) == 4358


def test_wikitext_test_row_count(data_dir, monkeypatch):
    monkeypatch.delenv("PRUNELAB_DATA_DIR")
    corpus = load_wikitext2("test", data_dir)
    assert len(corpus.rows) == 4358 and corpus.rows[1] == " = Robert Boulter = \n"


def test_ptb_rows_as_ptb_text_only():
    corpus = load_ptb("test", None)
    assert len(corpus.rows) == 3761
    assert corpus.rows[0] == corpus.rows[0].strip() and corpus.source.startswith("package:")
    assert len(load_ptb("validation", None).rows) == 3370


def test_c4_train_sample_document_range(data_dir):
    corpus = load_corpus("c4", "train", data_dir, documents=(500, 1000))
    assert len(corpus.rows) == 500 and corpus.source.endswith("#rows[500:1000]")


def test_missing_dataset_names_folders_and_remedy(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNELAB_DATA_DIR", raising=False)
    with pytest.raises(DataMissingError) as err:
        load_corpus("c4", "validation", str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "c4") in message and "PRUNELAB_DATA_DIR" in message
    assert "hub: allenai/c4" in message


def test_empty_dataset_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNELAB_DATA_DIR", raising=False)
    (tmp_path / "wikitext-2-raw-v1").mkdir()
    (tmp_path / "wikitext-2-raw-v1" / "test.txt").write_text(" \n \n")
    with pytest.raises(PrunelabError, match="is empty"):
        load_corpus("wikitext2", "test", str(tmp_path))


def test_unknown_dataset_and_split():
    with pytest.raises(PrunelabError, match="Did you mean: 'wikitext2'"):
        load_corpus("wikitext", "test", None)
    with pytest.raises(PrunelabError, match="Did you mean: 'test'"):
        load_corpus("ptb", "tes", None)


def test_row_range_outside_corpus(data_dir):
    with pytest.raises(PrunelabError, match="outside the 1000 rows"):
        load_corpus("c4", "train", data_dir, documents=(900, 1200))


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    rows = [f"document {i} " + "word " * (10 + 7 * i) for i in range(40)]
    return Corpus("synthetic", "train", rows, "test")


@pytest.mark.parametrize("mode", ["joined", "per_document"])
def test_calibration_deterministic_for_a_seed(corpus, mode):
    tok = byte_tokenizer()
    a = sample_calibration(corpus, tok, nsamples=8, seqlen=32, seed=3, mode=mode)
    b = sample_calibration(corpus, tok, nsamples=8, seqlen=32, seed=3, mode=mode)
    c = sample_calibration(corpus, tok, nsamples=8, seqlen=32, seed=4, mode=mode)
    assert a.shape == (8, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_document_windows_come_from_one_document(corpus):
    tok = byte_tokenizer()
    windows = sample_calibration(corpus, tok, nsamples=16, seqlen=40, seed=0, mode="per_document")
    for window in windows:
        text = tok.decode(window)
        assert any(text in row for row in corpus.rows)


def test_per_document_needs_long_documents(corpus):
    with pytest.raises(PrunelabError, match="longer than 5000 tokens"):
        sample_calibration(corpus, byte_tokenizer(), nsamples=2, seqlen=5000, seed=0,
                           mode="per_document")
