"""Tiny random models for tests: a byte-level tokenizer built in code and HF configs.

They check shapes, exactness and plumbing, never quality, and need no file or network.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

BYTE_VOCAB_SIZE = 257  # 256 byte symbols + <eos>


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A lossless byte-level tokenizer (one token per UTF-8 byte) with an ``<eos>`` token."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


def random_config(architecture: dict) -> PretrainedConfig:
    """The HF config of a random model (``model_type`` plus sizes; byte vocabulary default)."""
    fields = dict(architecture)
    model_type = fields.pop("model_type")
    fields.setdefault("vocab_size", BYTE_VOCAB_SIZE)
    return AutoConfig.for_model(model_type, **fields)


def random_model(architecture: dict, seed: int) -> torch.nn.Module:
    """A randomly initialised causal LM from HF config fields (``model_type`` plus sizes)."""
    config = random_config(architecture)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)
