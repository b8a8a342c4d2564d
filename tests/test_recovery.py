"""Recovery after pruning: LoRA / distillation, merged back, resumable, checked on bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.errors import ConfigCompositionException
from transformers import AutoModelForCausalLM

from prunelab import pipeline
from prunelab.config.schema import RecoveryConfig, TextSpec, validate
from prunelab.data.corpora import load_corpus
from prunelab.errors import ConfigError, PrunelabError
from prunelab.eval.perplexity import evaluation_windows, perplexity
from prunelab.models.integrity import check_model_folder
from prunelab.models.plan import PLAN_FILE
from prunelab.models.tiny import byte_tokenizer
from prunelab.record import read_record
from prunelab.recovery import trainer
from prunelab.recovery.checkpoint import CHECKPOINT_FILE
from prunelab.recovery.data import window_order
from prunelab.recovery.lora import attach_lora, merge_lora
from prunelab.recovery.losses import distillation_loss
from prunelab.recovery.trainer import recover
from prunelab.tracking.plots import running_mean
from prunelab.tracking.tables import build_table
from tests.helpers.records import record
from tests.helpers.tiny import tiny_model

TINY = ["model=tiny_llama", "benchmark=smoke", "logger=none", "schedule.ratio=0.3"]
SHORT = ["recovery.tokens=2048", "recovery.seqlen=64", "recovery.batch_size=4"]


def _job(make_cfg, tmp_path, *overrides, name="job"):
    return make_cfg(*TINY, f"paths.cache_dir={tmp_path / 'cache'}", *overrides,
                    output_dir=tmp_path / name)


def test_merged_model_equals_the_unmerged_peft_model():
    model = tiny_model("gqa")
    peft_model = attach_lora(model, RecoveryConfig().lora)
    torch.manual_seed(1)
    with torch.no_grad():  # trained adapters: B is no longer zero
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.eval()
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids).logits
        merged_model = merge_lora(peft_model)
        merged = merged_model(input_ids=ids).logits
    assert not any("lora" in name for name, _ in merged_model.named_parameters())
    assert torch.allclose(merged, unmerged, atol=1e-5)


def test_distillation_loss_equals_a_hand_computation():
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])
    teacher = torch.tensor([[[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]])
    temperature = 2.0
    expected = 0.0
    for s_row, t_row in zip(student[0].tolist(), teacher[0].tolist()):
        zs = sum(math.exp(v / temperature) for v in s_row)
        zt = sum(math.exp(v / temperature) for v in t_row)
        for s, t in zip(s_row, t_row):
            p = math.exp(t / temperature) / zt
            q = math.exp(s / temperature) / zs
            expected += p * math.log(p / q)
    expected = expected / 2 * temperature ** 2
    assert distillation_loss(student, teacher, temperature).item() == pytest.approx(expected,
                                                                                     rel=1e-6)
    assert distillation_loss(teacher, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_loss_curve_running_mean_by_hand():
    assert running_mean([4.0, 2.0, 6.0, 0.0, 1.0], 3) == pytest.approx(
        [4.0, 3.0, 4.0, 8 / 3, 7 / 3])
    assert running_mean([1.0, 5.0], 1) == [1.0, 5.0]


def test_window_order_is_a_seeded_permutation_per_epoch():
    order = window_order(5, 3, 3, seed=7)  # 9 reads of 5 windows: one epoch and a part
    assert order.shape == (3, 3)
    assert sorted(order.flatten()[:5].tolist()) == list(range(5))
    assert torch.equal(order, window_order(5, 3, 3, seed=7))
    assert not torch.equal(order, window_order(5, 3, 3, seed=8))


def _spec(**fields) -> RecoveryConfig:
    return RecoveryConfig(**{"name": "lora", "data": TextSpec("wikitext2", split="validation",
                                                              joiner=" "),
                             "seqlen": 32, "batch_size": 4, "tokens": 30 * 4 * 32, "lr": 3e-3,
                             "warmup_ratio": 0.0, "lr_schedule": "constant",
                             "checkpoint_every": 0, **fields})


def _tokenizer():
    return byte_tokenizer()


def test_loss_falls_over_30_steps(data_dir, tmp_path):
    outcome = recover(tiny_model("mha"), _tokenizer(), _spec(), torch.device("cpu"), data_dir,
                      tmp_path, "test")
    losses = outcome.losses
    assert outcome.optimizer_steps == len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1, (first, last)
    assert outcome.tokens == 30 * 4 * 32
    assert not any("lora" in name for name, _ in outcome.model.named_parameters())
    assert all(p.requires_grad for p in outcome.model.parameters())  # as pruning left it


def test_full_training_leaves_the_embedding_and_trains_the_rest(data_dir, tmp_path):
    model = tiny_model("mha")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    teacher = tiny_model("mha", seed=1)
    outcome = recover(model, _tokenizer(), _spec(name="distill", train="full", tokens=512,
                                                 lm_weight=0.5),
                      torch.device("cpu"), data_dir, tmp_path, "test", teacher=teacher)
    after = dict(outcome.model.named_parameters())
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert not torch.equal(after["model.layers.0.mlp.down_proj.weight"],
                           before["model.layers.0.mlp.down_proj.weight"])
    assert outcome.trainable_parameters == sum(
        p.numel() for n, p in before.items() if n != "model.embed_tokens.weight")
    assert all(p.requires_grad for p in outcome.model.parameters())


def test_recovery_keeps_plan_and_parameters_and_the_saved_model_reloads_exactly(
        make_cfg, tmp_path, data_dir):
    cfg = _job(make_cfg, tmp_path, "recovery=lora", *SHORT, "save_model=true")
    result = pipeline.run(cfg)
    rec = result.recovery
    assert rec is not None and rec.name == "lora" and rec.tokens == 2048
    assert len(rec.loss) == rec.optimizer_steps == 8 and rec.resumed_from_step is None
    assert rec.before.perplexity["wikitext2"].ppl != result.metrics.perplexity["wikitext2"].ppl
    assert (tmp_path / "job" / "recovery_loss.png").is_file()
    parts = result.evaluation.parts_s  # both evaluations are timed
    assert {"perplexity", "perplexity_before_recovery"} <= parts.keys()
    assert result.evaluation.wall_time_s == pytest.approx(sum(parts.values()))
    assert not (tmp_path / "job" / CHECKPOINT_FILE).exists()  # removed once training finished
    # the same pruning without recovery: same plan, same parameter counts, same "before"
    unrecovered = pipeline.run(_job(make_cfg, tmp_path, name="plain"))
    assert result.pruning.plan == unrecovered.pruning.plan
    assert result.parameters == unrecovered.parameters
    assert result.layers == unrecovered.layers
    assert rec.before.perplexity["wikitext2"].ppl == \
        unrecovered.metrics.perplexity["wikitext2"].ppl
    # the saved model has no adapter, the pruned geometry, and reloads to the same perplexity
    folder = tmp_path / "job" / "model"
    check_model_folder(folder)
    plan = json.loads((folder / PLAN_FILE).read_text())
    assert plan["layers"] == result.pruning.plan["layers"]
    reloaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    assert sum(p.numel() for p in reloaded.parameters()) == result.parameters.after.total
    run = validate(cfg)
    spec = run.benchmark.perplexity["wikitext2"]
    windows = evaluation_windows(load_corpus(spec.dataset, spec.split, data_dir),
                                 _tokenizer(), spec.seqlen, spec.joiner, spec.max_windows)
    again = perplexity(reloaded, windows, 4, torch.device("cpu"))["ppl"]
    assert again == pytest.approx(result.metrics.perplexity["wikitext2"].ppl, rel=1e-6)


def test_killed_recovery_resumes_to_the_weights_of_an_uninterrupted_run(
        make_cfg, tmp_path, monkeypatch):
    overrides = ["recovery=lora", *SHORT, "recovery.checkpoint_every=3", "save_model=true"]
    pipeline.run(_job(make_cfg, tmp_path, *overrides, name="whole"))

    real = trainer.recover

    def killed_after_step_4(*args, **kwargs):
        def on_step(step, loss, lr):
            if step == 4:
                raise KeyboardInterrupt("killed")
        return real(*args[:-1], on_step, **kwargs)

    monkeypatch.setattr(pipeline, "recover", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(_job(make_cfg, tmp_path, *overrides, name="killed"))
    assert (tmp_path / "killed" / CHECKPOINT_FILE).is_file()
    assert (tmp_path / "killed" / "failure.json").is_file()
    monkeypatch.setattr(pipeline, "recover", real)
    resumed = pipeline.run(_job(make_cfg, tmp_path, *overrides, name="killed"))
    assert resumed.recovery.resumed_from_step == 3
    whole = read_record(tmp_path / "whole")
    assert resumed.recovery.loss == whole.recovery.loss
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "whole" / "model",
                                             trust_remote_code=True)
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "killed" / "model",
                                             trust_remote_code=True)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_distill_records_the_teacher_and_trains(make_cfg, tmp_path):
    result = pipeline.run(_job(make_cfg, tmp_path, "recovery=distill", *SHORT,
                               "recovery.lm_weight=0.5"))
    rec = result.recovery
    assert rec.name == "distill" and rec.train == "lora"
    weights = 4 * result.parameters.before.total  # float32, plus the rotary buffer
    assert weights <= rec.teacher_memory_bytes < weights + 1024
    assert rec.final_loss > 0 and rec.peak_memory_bytes


def test_distill_without_a_loadable_teacher_says_why(make_cfg, tmp_path, monkeypatch):
    real = pipeline.load_model
    calls = []

    def second_load_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("model.safetensors: No such file")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_model", second_load_fails)
    with pytest.raises(PrunelabError, match="load the dense teacher.*No such file"):
        pipeline.run(_job(make_cfg, tmp_path, "recovery=distill", *SHORT))


def test_distill_from_an_already_pruned_model_is_refused(make_cfg, tmp_path):
    pipeline.run(_job(make_cfg, tmp_path, "save_model=true", name="pruned"))
    folder = tmp_path / "pruned" / "model"
    cfg = _job(make_cfg, tmp_path, "model=local", f"model.path={folder}",
               "+model.trust_remote_code=true", "method=dense", "recovery=distill", *SHORT)
    with pytest.raises(PrunelabError, match="already a pruned prunelab model"):
        pipeline.run(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["recovery=lora", "recovery.lr=0"], "lr must be > 0"),
    (["recovery=lora", "recovery.tokens=100"], "less than one batch"),
    (["recovery=lora", "recovery.train=full"], "recovery=lora trains LoRA adapters"),
    (["recovery=lora", "recovery.data.dataset=wikitext2", "recovery.data.split=test"],
     "overlaps the evaluated benchmark.perplexity.wikitext2"),
    (["recovery=distill", "recovery.temperature=0"], "temperature must be > 0"),
])
def test_bad_recovery_configs_are_refused(make_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(_job(make_cfg, tmp_path, *overrides))


def test_unknown_recovery_is_refused(make_cfg, tmp_path):
    with pytest.raises(ConfigCompositionException, match="recovery"):
        _job(make_cfg, tmp_path, "recovery=qlora")


def test_overlap_is_allowed_only_with_the_flag_and_recorded(make_cfg, tmp_path):
    cfg = _job(make_cfg, tmp_path, "recovery=lora", *SHORT, "recovery.data.dataset=ptb",
               "recovery.data.split=test", "recovery.allow_eval_overlap=true")
    assert pipeline.run(cfg).recovery.allow_eval_overlap is True


def test_recovery_none_keeps_old_job_fingerprints(make_cfg, tmp_path):
    from prunelab.config.schema import job_container
    from prunelab.tracking.identity import job_fingerprint

    config = job_container(_job(make_cfg, tmp_path))
    old = {k: v for k, v in config.items() if k != "recovery"}
    assert job_fingerprint(config) == job_fingerprint(old)
    lora = job_container(_job(make_cfg, tmp_path, "recovery=lora"))
    assert job_fingerprint(lora) != job_fingerprint(config)


def _recovered(base, name: str, after: float):
    import dataclasses

    from prunelab.record import RecoveryInfo

    tuned = record(base.method.name, base.ratio, after)
    tuned.config = {**base.config, "recovery": {"name": name, "train": "lora"}}
    tuned.recovery = RecoveryInfo(name, "lora", "float32", {}, False, 1, 1, 1, 1.0, 1, 1.0,
                                  1.0, {}, None, [1.0], 1.0, None,
                                  dataclasses.replace(base.metrics))
    return tuned


def test_tables_put_tuned_rows_under_their_untuned_row():
    dense = record("dense", 0.0, 10.0)
    flap = record("flap", 0.2, 14.0)
    results = [dense, _recovered(flap, "distill", 12.0), _recovered(flap, "lora", 13.0)]
    table = build_table(results)
    labels = [(row.label, row.values["ppl/wikitext2"]) for row in table.rows]
    assert labels == [("dense (w/o tune)", 10.0), ("flap (w/o tune)", 14.0),
                      ("flap (w/ tune: distill)", 12.0), ("flap (w/ tune: lora)", 13.0)]
    # without recovered jobs the rows are as before (no tune labels)
    assert [row.label for row in build_table([dense, flap]).rows] == ["dense", "flap"]
