"""The pruned-model architectures, registered with transformers' Auto classes on import.

One pruned family per source layout: ``prunelab_llama`` (LLaMA, Mistral, Qwen2) and
``prunelab_gemma3``. A saved pruned model carries copies of its family's code files so that
plain transformers can load it with ``trust_remote_code=True``, which executes them. Each copy
starts with a header naming the prunelab version that wrote it and the SHA-256 of the code
below the header; :func:`check_remote_code` refuses a folder whose code no longer matches its
header (it was edited), and warns when it differs from the installed code of the same version
(a development build wrote it).
"""

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from prunelab.errors import CorruptFileError
from prunelab.models.pruned.configuration_prunelab import PrunelabConfig
from prunelab.models.pruned.configuration_prunelab_gemma3 import PrunelabGemma3Config
from prunelab.models.pruned.modeling_prunelab import PrunelabForCausalLM
from prunelab.models.pruned.modeling_prunelab_gemma3 import PrunelabGemma3ForCausalLM

log = logging.getLogger(__name__)
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class PrunedFamily:
    """A pruned architecture: its config and model classes and the code files they need."""

    config_cls: type
    model_cls: type
    #: Copied next to a saved model (a class's module and the modules it imports).
    code_files: tuple[str, ...]

    @property
    def auto_map(self) -> dict[str, str]:
        """config.json's ``auto_map``: where ``trust_remote_code=True`` finds the classes."""
        return {"AutoConfig": _qualified(self.config_cls),
                "AutoModelForCausalLM": _qualified(self.model_cls)}


def _qualified(cls: type) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


_LLAMA_FILES = ("configuration_prunelab.py", "modeling_prunelab.py")
#: Pruned families by their model_type.
FAMILIES = {
    PrunelabConfig.model_type: PrunedFamily(PrunelabConfig, PrunelabForCausalLM, _LLAMA_FILES),
    PrunelabGemma3Config.model_type: PrunedFamily(
        PrunelabGemma3Config, PrunelabGemma3ForCausalLM,
        (*_LLAMA_FILES, "configuration_prunelab_gemma3.py", "modeling_prunelab_gemma3.py")),
}

_HEADER = "# Written by prunelab {version}; SHA-256 of the code below this line: {digest}\n"
_HEADER_PATTERN = re.compile(r"# Written by prunelab (\S+); SHA-256 of the code below this "
                             r"line: ([0-9a-f]{64})\n")


def _version() -> str:
    try:
        return metadata.version("prunelab")
    except metadata.PackageNotFoundError:
        return "unknown"


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def write_remote_code(folder: Path, model_type: str) -> None:
    """Copy the family's code files into ``folder``, each under its version-and-hash header."""
    for name in FAMILIES[model_type].code_files:
        code = (_HERE / name).read_text()
        header = _HEADER.format(version=_version(), digest=_digest(code))
        (folder / name).write_text(header + code)


def check_remote_code(folder: Path, model_type: str) -> None:
    """Refuse code files that were edited after prunelab wrote them.

    Raises ``CorruptFileError`` naming the file. Code that matches its header but not the
    installed prunelab's code is accepted with a warning: prunelab itself loads the model
    with its installed classes, never with the folder's code.
    """
    family = FAMILIES.get(model_type)
    if family is None:
        raise CorruptFileError(f"{folder}/config.json names model_type {model_type!r} and "
                               f"remote code, but prunelab writes remote code only for "
                               f"{', '.join(FAMILIES)}. The folder was not written by prunelab.")
    installed = _version()
    for name in family.code_files:
        path = folder / name
        if not path.is_file():
            raise CorruptFileError(f"{path} is missing: config.json's auto_map needs it. Copy "
                                   "the folder again, or re-save the model with prunelab.")
        header, _, code = path.read_text().partition("\n")
        match = _HEADER_PATTERN.fullmatch(header + "\n")
        problem = None
        if match is None:
            problem = "it has no prunelab header (version and SHA-256)"
        elif _digest(code) != match.group(2):
            problem = "its code does not match the SHA-256 in its header: it was edited"
        if problem:
            raise CorruptFileError(
                f"{path}: {problem}. trust_remote_code=True would execute this file; do not "
                "load the folder with it. Re-save the model with prunelab to restore the code.")
        if code != (_HERE / name).read_text():
            log.warning("%s was written by prunelab %s and differs from the installed %s's "
                        "code; prunelab loads the model with its installed classes", path,
                        match.group(1), installed)


for _family in FAMILIES.values():
    AutoConfig.register(_family.config_cls.model_type, _family.config_cls, exist_ok=True)
    AutoModelForCausalLM.register(_family.config_cls, _family.model_cls, exist_ok=True)

__all__ = ["FAMILIES", "PrunedFamily", "PrunelabConfig", "PrunelabForCausalLM",
           "PrunelabGemma3Config", "PrunelabGemma3ForCausalLM", "check_remote_code",
           "write_remote_code"]
