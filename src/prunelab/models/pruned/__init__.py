"""The pruned-model architecture, registered with transformers' Auto classes on import.

A saved pruned model carries copies of the two code files so that plain transformers can load
it with ``trust_remote_code=True``, which executes them. Each copy starts with a header naming
the prunelab version that wrote it and the SHA-256 of the code below the header;
:func:`check_remote_code` refuses a folder whose code no longer matches its header (it was
edited), and warns when it differs from the installed code of the same version (a development
build wrote it).
"""

import hashlib
import logging
import re
from importlib import metadata
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from prunelab.errors import CorruptFileError
from prunelab.models.pruned.configuration_prunelab import PrunelabConfig
from prunelab.models.pruned.modeling_prunelab import PrunelabForCausalLM

log = logging.getLogger(__name__)

#: Files copied next to saved pruned models so plain transformers can load them.
REMOTE_CODE_FILES = [Path(__file__).parent / "configuration_prunelab.py",
                     Path(__file__).parent / "modeling_prunelab.py"]
AUTO_MAP = {"AutoConfig": "configuration_prunelab.PrunelabConfig",
            "AutoModelForCausalLM": "modeling_prunelab.PrunelabForCausalLM"}

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


def write_remote_code(folder: Path) -> None:
    """Copy the code files into ``folder``, each under its version-and-hash header."""
    for source in REMOTE_CODE_FILES:
        code = source.read_text()
        header = _HEADER.format(version=_version(), digest=_digest(code))
        (folder / source.name).write_text(header + code)


def check_remote_code(folder: Path) -> None:
    """Refuse code files that were edited after prunelab wrote them.

    Raises ``CorruptFileError`` naming the file. Code that matches its header but not the
    installed prunelab's code is accepted with a warning: prunelab itself loads the model
    with its installed classes, never with the folder's code.
    """
    installed = _version()
    for source in REMOTE_CODE_FILES:
        path = folder / source.name
        if not path.is_file():
            raise CorruptFileError(f"{path} is missing: config.json's auto_map names it. Copy "
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
        if code != source.read_text():
            log.warning("%s was written by prunelab %s and differs from the installed %s's "
                        "code; prunelab loads the model with its installed classes", path,
                        match.group(1), installed)


AutoConfig.register(PrunelabConfig.model_type, PrunelabConfig, exist_ok=True)
AutoModelForCausalLM.register(PrunelabConfig, PrunelabForCausalLM, exist_ok=True)

__all__ = ["AUTO_MAP", "REMOTE_CODE_FILES", "PrunelabConfig", "PrunelabForCausalLM",
           "check_remote_code", "write_remote_code"]
