"""One job: load -> prune (prunelab/pruning.py) -> [recover] -> evaluate -> record.

With ``recovery`` set, the pruned model is evaluated (perplexity, zero-shot) before training
too, and both sets of figures go into results.json (the papers' "w/o tune" and "w/ tune").

``run`` validates the whole config before anything heavy, skips a job whose results.json is
already complete (so re-launched sweeps repeat nothing; a folder holding another job's results
is an error), copies the results of an identical job of the same sweep instead of repeating it
(tracking/identity.py), and always closes W&B; a failed job leaves a ``failure.json`` note and
no results.json.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from prunelab import pruning
from prunelab.allocator import pin_mmap_threshold
from prunelab.atomic import atomic_folder, write_json_atomic
from prunelab.config.schema import RunConfig, job_container, validate
from prunelab.config.typed import to_dataclass
from prunelab.data.calibration import with_bos
from prunelab.data.corpora import load_corpus
from prunelab.errors import DiskFullError, PrunelabError
from prunelab.eval.perplexity import (
    evaluation_windows,
    layerwise_perplexity,
    perplexity,
    protocol_fields,
)
from prunelab.eval.speed import measure_speed
from prunelab.eval.zeroshot import check_available as check_zero_shot_available
from prunelab.eval.zeroshot import evaluate_zero_shot
from prunelab.meter import PhaseMeter, current_rss_bytes, process_peak_rss_bytes
from prunelab.models import memory
from prunelab.models.adapters import adapter_for
from prunelab.models.loading import (
    LoadedModel,
    load_model,
    load_streamed,
    model_config,
    resolve_device,
)
from prunelab.models.plan import SOURCE_FIELD
from prunelab.models.surgery import save_pruned
from prunelab.record import (
    RESULTS_FILE,
    Evaluation,
    JobInfo,
    LayerSizes,
    MemoryInfo,
    MethodInfo,
    Metrics,
    ModelInfo,
    ParameterCounts,
    Parameters,
    PerplexityResult,
    PruningInfo,
    RecoveryInfo,
    ResultsRecord,
    SpeedResult,
    WandbInfo,
    ZeroShotResult,
    read_record,
)
from prunelab.recovery.checkpoint import CHECKPOINT_FILE
from prunelab.recovery.trainer import recover
from prunelab.registry import METHODS
from prunelab.tracking.identity import (
    comparable_config,
    describe_differences,
    differing_keys,
    job_fingerprint,
)
from prunelab.tracking.plots import plot_kept_units, plot_loss_curve, plot_module_allocation
from prunelab.tracking.results import FAILURE_FILE, environment, summary_table
from prunelab.tracking.wandb_logger import WandbLogger

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> ResultsRecord:
    """Run the job ``cfg`` describes and return its results (also written to results.json).

    Any failure, an invalid config included, leaves ``failure.json`` (error, traceback, the
    job's config) in the job folder; a job that then succeeds removes it.
    """
    out_dir = Path(str(cfg.paths.output_dir))
    try:
        record = _run(cfg, out_dir)
    except BaseException as err:
        if not _disk_full(err):
            _record_failure(out_dir, cfg, err)
            raise
        full = DiskFullError(
            f"No space left on the device ({err}): nothing partial was left under a final "
            "name. Free space, or point paths.output_dir and paths.cache_dir at a larger disk, "
            "and relaunch: the job is redone.")
        _record_failure(out_dir, cfg, full)
        raise full from err
    (out_dir / FAILURE_FILE).unlink(missing_ok=True)
    return record


def _disk_full(err: BaseException | None) -> bool:
    """ENOSPC, also where a library reports it in its own error type (safetensors does)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(err):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _run(cfg: DictConfig, out_dir: Path) -> ResultsRecord:
    run_cfg = validate(cfg)
    _ensure_writable(out_dir)
    resolved = job_container(cfg)
    job = {**_job_identity(run_cfg), "fingerprint": job_fingerprint(resolved)}
    if not run_cfg.overwrite:
        previous = read_record(out_dir)
        if previous is not None:
            _check_same_job(previous, resolved, out_dir)
            log.info("Skipping: %s is complete (overwrite=true re-runs it)",
                     out_dir / RESULTS_FILE)
            return previous
        if job["num"] is not None and not run_cfg.save_model:  # a reused job saves no model
            reused = _reuse_sibling(out_dir, job, resolved)
            if reused is not None:
                return reused
    logger = WandbLogger(run_cfg.logger, out_dir, resolved, group=job["group"],
                         job_type=run_cfg.method.name, name=job["name"])
    failed = True
    try:
        results = _execute(run_cfg, resolved, job, out_dir, logger)
        failed = False
        return results
    finally:
        logger.finish(failed=failed)


def _record_failure(out_dir: Path, cfg: DictConfig, err: BaseException) -> None:
    """Write failure.json, unless the folder holds complete results of a (different) job."""
    if (out_dir / RESULTS_FILE).is_file():
        return
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an unresolvable config is itself the failure being recorded
        config = OmegaConf.to_container(cfg, resolve=False)
    try:
        write_json_atomic(out_dir / FAILURE_FILE, {
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
            "at": _now(),
            "config": config,
        })
    except OSError as write_err:
        log.error("Could not write %s (%s); the job failed with: %s",
                  out_dir / FAILURE_FILE, write_err, err)


def _execute(run_cfg: RunConfig, resolved: dict, job: dict, out_dir: Path,
             logger: WandbLogger) -> ResultsRecord:
    started = _now()
    check_zero_shot_available(run_cfg.benchmark.zero_shot, run_cfg.paths.cache_dir)
    method = METHODS.get(run_cfg.method.name)(run_cfg.method.params)
    if run_cfg.memory.stream:  # blocks are freed one after another: return them to the OS
        pin_mmap_threshold()
    baseline = current_rss_bytes()
    device = resolve_device(run_cfg.model.device)
    expected = memory.estimate(
        memory.Geometry.from_config(model_config(run_cfg.model, run_cfg.paths.cache_dir,
                                                 stream=run_cfg.memory.stream)),
        run_cfg, frozenset(method.needs), method.prunes(), device.type == "cuda")
    log.info("Memory model, expected peak per phase:\n%s",
             memory.format_table(expected, baseline))
    memory.check_budget(expected, run_cfg.memory.host_budget_gb, baseline,
                        run_cfg.memory.stream)
    meter = PhaseMeter(device)
    t0 = time.perf_counter()
    with meter.phase("load"):
        loaded = (load_streamed if run_cfg.memory.stream else load_model)(
            run_cfg.model, run_cfg.paths.cache_dir)
    load_time = time.perf_counter() - t0
    _check_context(run_cfg, loaded)
    _check_dense_available(run_cfg, loaded)
    before = _parameter_counts(loaded)
    layers_before = _layer_sizes(loaded)

    if not method.prunes():
        log.info("method=%s removes nothing: the schedule is not used", run_cfg.method.name)
    t0 = time.perf_counter()
    outcome = pruning.prune(method, loaded, run_cfg)
    prune_time = time.perf_counter() - t0
    after = _parameter_counts(loaded)
    layers_after = _layer_sizes(loaded)
    if outcome.plan is not None:
        _plot_pruning(run_cfg, outcome, layers_before, layers_after, out_dir, logger)
    recovery, parts_before = None, {}
    if run_cfg.recovery.enabled:
        recovery, parts_before = _recover(run_cfg, loaded, job["fingerprint"], out_dir, logger)
        if _parameter_counts(loaded) != after or _layer_sizes(loaded) != layers_after:
            raise RuntimeError("recovery changed the pruned geometry; it must only train")
    if run_cfg.save_model and not (run_cfg.memory.stream and outcome.plan is not None):
        with meter.phase("save"):  # a streamed job's surgery has written it already
            _save_model(loaded, outcome, out_dir / "model")
    metrics, parts = _evaluate(run_cfg, loaded, prunes=method.prunes(), meter=meter)
    parts |= {f"{part}_before_recovery": seconds for part, seconds in parts_before.items()}

    record = ResultsRecord(
        job=JobInfo(**job, output_dir=str(out_dir), started_at=started, finished_at=_now()),
        config=resolved,
        environment=environment(),
        model=ModelInfo(run_cfg.model.name, loaded.source, loaded.model.config.model_type,
                        str(loaded.device), run_cfg.model.dtype, load_time),
        method=MethodInfo(run_cfg.method.name, resolved["method"]),
        schedule=resolved["schedule"] if method.prunes() else None,
        parameters=Parameters(before, after),
        pruning=PruningInfo(
            ratio_asked=outcome.ratio_asked,
            ratio_achieved=1 - after.prunable / before.prunable,
            ratio_achieved_total=1 - after.total / before.total,
            wall_time_s={"total": prune_time, **outcome.timings_s},
            peak_memory_bytes={"process_max_rss": process_peak_rss_bytes(),
                               **outcome.peak_memory_bytes},
            details=outcome.details,
            plan=outcome.plan.to_dict() if outcome.plan is not None else None,
            removed_blocks=outcome.plan.removed_blocks() if outcome.plan is not None else []),
        layers=layers_after,
        layers_before=layers_before,
        metrics=metrics,
        evaluation=Evaluation(sum(parts.values()), parts),
        wandb=WandbInfo(logger.mode if logger.run else None, logger.run_dir),
        recovery=recovery,
        memory=MemoryInfo(
            kind=meter.memory_kind, baseline_bytes=baseline,
            predicted_host_bytes={k: v.host_bytes + baseline for k, v in expected.items()},
            predicted_device_bytes={k: v.device_bytes for k, v in expected.items()},
            measured_bytes=_chronological(meter.peak_memory_bytes, outcome.peak_memory_bytes),
            process_peak_bytes=process_peak_rss_bytes()),
    )
    write_json_atomic(out_dir / RESULTS_FILE, record.to_dict())
    logger.log_results(record)
    print(summary_table(record))
    return record


def _chronological(job_phases: dict[str, int], pruning_phases: dict[str, int]
                   ) -> dict[str, int]:
    """The job's phases in the order they ran: loading, the pruning stage's, the rest."""
    rest = {k: v for k, v in job_phases.items() if k != "load"}
    return {"load": job_phases["load"], **pruning_phases, **rest}


def _plot_pruning(run_cfg: RunConfig, outcome: pruning.PruningOutcome,
                  layers_before: list[LayerSizes], layers_after: list[LayerSizes],
                  out_dir: Path, logger: WandbLogger) -> None:
    """Kept units per block, and module scores with their allocation when there are any."""
    name = f"{run_cfg.model.name} {run_cfg.method.name}"
    plot = plot_kept_units(layers_before, layers_after,
                           f"{name} ratio {outcome.ratio_asked:.2f}", out_dir / "kept_units.png")
    logger.log_image("kept_units", plot)
    blocks = outcome.details.get("blocks", [])
    if blocks and "attention_score" in blocks[0]:
        plot = plot_module_allocation(blocks, layers_before,
                                      f"{name} module scores and allocation",
                                      out_dir / "modules.png")
        logger.log_image("modules", plot)


def _check_dense_available(run_cfg: RunConfig, loaded: LoadedModel) -> None:
    """Refuse up front what needs the dense model when the job's model is already pruned.

    Distillation's teacher and the speed reference are the dense model, loaded once more.
    """
    prunes = METHODS.get(run_cfg.method.name).prunes()
    if run_cfg.recovery.name == "distill" and not prunes:
        log.warning("recovery=distill of method=%s: the student is the teacher, so the KL "
                    "term is zero and only lm_weight (%s) trains it", run_cfg.method.name,
                    run_cfg.recovery.lm_weight)
    speed = run_cfg.benchmark.speed
    needs = []
    if run_cfg.recovery.name == "distill":
        needs.append(("recovery=distill", "teacher", "recovery=lora"))
    if speed.enabled and speed.reference == "dense" and prunes:
        needs.append(("benchmark.speed.reference=dense", "speed reference",
                      "benchmark.speed.reference=none"))
    if needs and loaded.model.config.model_type.startswith("prunelab"):
        option, role, instead = needs[0]
        raise PrunelabError(
            f"{option} needs the dense model as {role}, but model {run_cfg.model.name!r} "
            f"({loaded.source}) is already a pruned prunelab model, so its dense model cannot "
            f"be loaded from it. Run the pruning job from the dense model with {option}, or "
            f"use {instead}.")


def _load_dense(run_cfg: RunConfig, role: str) -> nn.Module:
    """The job's dense model once more, frozen in eval mode (a teacher, a speed reference)."""
    try:
        dense = load_model(run_cfg.model, run_cfg.paths.cache_dir).model
    except Exception as err:
        raise PrunelabError(f"Could not load the dense {role} (model {run_cfg.model.name!r}): "
                            f"{type(err).__name__}: {err}") from err
    return dense.eval().requires_grad_(False)


def _recover(run_cfg: RunConfig, loaded: LoadedModel, fingerprint: str, out_dir: Path,
             logger: WandbLogger) -> tuple[RecoveryInfo, dict[str, float]]:
    """Evaluate the pruned model, train it (recovery/), and report both.

    Also returns the time each part of the evaluation before training took.
    """
    spec = run_cfg.recovery
    before, parts_before = _evaluate(run_cfg, loaded, speed=False)
    teacher = teacher_bytes = None
    if spec.name == "distill":
        teacher = _load_dense(run_cfg, "teacher of recovery=distill")
        teacher_bytes = sum(t.numel() * t.element_size()
                            for t in [*teacher.parameters(), *teacher.buffers()])
        log.info("Distillation teacher loaded: %.2f GB of weights", teacher_bytes / 1e9)
    if (out_dir / CHECKPOINT_FILE).is_file():
        log.info("Found %s: recovery resumes from it", out_dir / CHECKPOINT_FILE)

    def on_step(step: int, loss: float, lr: float) -> None:
        logger.log_step({"recovery/loss": loss, "recovery/lr": lr, "recovery/step": step})

    meter = PhaseMeter(loaded.device)
    with meter.phase("recovery"):
        trained = recover(loaded.model, loaded.tokenizer, spec, loaded.device,
                          run_cfg.paths.data_dir, out_dir, fingerprint, teacher, on_step,
                          bos=run_cfg.model.bos)
    del teacher
    loaded.model = trained.model
    loaded.adapter = adapter_for(trained.model)
    curve = plot_loss_curve(trained.losses, f"{run_cfg.model.name} {run_cfg.method.name} "
                            f"recovery={spec.name}", out_dir / "recovery_loss.png")
    logger.log_image("recovery_loss", curve)
    log.info("Recovery: %d tokens in %.0f s (%.0f tokens/s), final loss %.4f", trained.tokens,
             trained.wall_time_s, trained.tokens_per_s, trained.final_loss)
    info = RecoveryInfo(
        name=spec.name, train=spec.train, dtype=trained.dtype,
        data=dataclasses.asdict(spec.data), allow_eval_overlap=spec.allow_eval_overlap,
        tokens=trained.tokens, micro_batches=trained.micro_batches,
        optimizer_steps=trained.optimizer_steps, epochs=trained.epochs,
        trainable_parameters=trained.trainable_parameters, wall_time_s=trained.wall_time_s,
        tokens_per_s=trained.tokens_per_s,
        peak_memory_bytes={meter.memory_kind: meter.peak_memory_bytes["recovery"]},
        teacher_memory_bytes=teacher_bytes, loss=trained.losses,
        final_loss=trained.final_loss, resumed_from_step=trained.resumed_from_step,
        before=before)
    return info, parts_before


def _evaluate(run_cfg: RunConfig, loaded: LoadedModel, speed: bool = True,
              prunes: bool = False, meter: PhaseMeter | None = None
              ) -> tuple[Metrics, dict[str, float]]:
    """The benchmark suite's measurements (speed only if ``speed``), and each part's time.

    With ``benchmark.speed.reference=dense`` and a method that ``prunes``, the dense model is
    loaded for the speed part only and timed interleaved with the pruned one. ``meter``
    records each part's peak memory.
    """
    bench = run_cfg.benchmark
    meter = meter or PhaseMeter(loaded.device)
    t0 = time.perf_counter()
    metrics = Metrics(_evaluate_perplexity(run_cfg, loaded, meter))
    parts = {"perplexity": time.perf_counter() - t0}
    if bench.zero_shot.tasks:
        t0 = time.perf_counter()
        with meter.phase("zero_shot"):
            metrics.zero_shot = _typed(ZeroShotResult, evaluate_zero_shot(
                loaded.model, loaded.tokenizer, bench.zero_shot, run_cfg.paths.cache_dir,
                loaded.device, bos=run_cfg.model.bos, layerwise=None if loaded.weights is None
                else (loaded.adapter, pruning.job_residency(loaded.weights, run_cfg))),
                "metrics.zero_shot")
        parts["zero_shot"] = time.perf_counter() - t0
    if speed and bench.speed.enabled:
        t0 = time.perf_counter()
        with meter.phase("speed"):
            metrics.speed = _measure_speed(run_cfg, loaded, prunes)
        parts["speed"] = time.perf_counter() - t0
    return metrics, parts


def _measure_speed(run_cfg: RunConfig, loaded: LoadedModel, prunes: bool) -> SpeedResult:
    """The speed part; the dense reference is loaded for it when the suite asks for one."""
    bench = run_cfg.benchmark
    reference = None
    if bench.speed.reference == "dense" and prunes:
        reference = _load_dense(run_cfg, "speed reference")
    elif bench.speed.reference == "dense":
        log.info("benchmark.speed.reference=dense: method=%s removes nothing, so the job "
                 "records no speed-up", run_cfg.method.name)
    return _typed(SpeedResult, measure_speed(
        loaded.model, loaded.adapter, bench.speed, loaded.device,
        loaded.model.get_input_embeddings().num_embeddings, reference), "metrics.speed")


def _typed(cls: type, data: dict[str, Any], where: str) -> Any:
    """An evaluation's dict as its record type; a mismatch is a bug in prunelab."""
    problems: list[str] = []
    typed = to_dataclass(cls, data, where, problems)
    if problems:
        raise RuntimeError("; ".join(problems))
    return typed


def _check_same_job(previous: ResultsRecord, resolved: dict, out_dir: Path) -> None:
    """Refuse to skip a folder whose results came from a different job."""
    if job_fingerprint(previous.config) == job_fingerprint(resolved):
        return
    differing = differing_keys([comparable_config(previous.config),
                                comparable_config(resolved)])
    raise PrunelabError(
        f"{out_dir / RESULTS_FILE} holds the results of a different job (old vs new):\n"
        f"{describe_differences(differing)}\nRe-run it with overwrite=true, or send this sweep "
        "to a new folder (hydra.sweep.dir=...).")


def _reuse_sibling(out_dir: Path, job: dict[str, Any], resolved: dict) -> ResultsRecord | None:
    """Copy the results of an identical job of the same sweep (dense at every ratio runs once)."""
    for candidate in sorted(out_dir.parent.glob(f"*/{RESULTS_FILE}")):
        if candidate.parent == out_dir:
            continue
        results = read_record(candidate.parent)
        if results is None or job_fingerprint(results.config) != job["fingerprint"]:
            continue
        log.info("Reusing %s: this job is identical to it (same fingerprint %s)",
                 candidate, job["fingerprint"])
        reused = dataclasses.replace(
            results, config=resolved,
            job=dataclasses.replace(results.job, **job, output_dir=str(out_dir),
                                    reused_from=str(candidate.parent)))
        write_json_atomic(out_dir / RESULTS_FILE, reused.to_dict())
        return reused
    return None


def _save_model(loaded: LoadedModel, outcome, folder: Path) -> None:
    """Save the job's model as a Hugging Face folder (pruned: with its plan and code)."""
    if outcome.plan is None:
        with atomic_folder(folder) as staging:
            loaded.model.save_pretrained(staging)
            loaded.tokenizer.save_pretrained(staging)
    else:
        save_pruned(loaded.model, loaded.tokenizer, folder, outcome.plan,
                    record={SOURCE_FIELD: loaded.source})
    log.info("Model saved to %s", folder)


def _evaluate_perplexity(run_cfg: RunConfig, loaded: LoadedModel, meter: PhaseMeter
                         ) -> dict[str, PerplexityResult]:
    results = {}
    bench = run_cfg.benchmark
    for name, spec in bench.perplexity.items():
        with meter.phase(f"perplexity/{name}"):  # reading the corpus included
            corpus = load_corpus(spec.dataset, spec.split, run_cfg.paths.data_dir,
                                 documents=spec.documents, path=spec.path)
            windows = evaluation_windows(corpus, loaded.tokenizer, spec.seqlen, spec.joiner,
                                         spec.max_windows)
            if run_cfg.model.bos:
                windows = with_bos(windows, loaded.tokenizer)
            if loaded.weights is None:
                value = perplexity(loaded.model, windows, bench.batch_size, loaded.device,
                                   desc=name)
            else:  # a streamed model (memory.evaluation=layerwise)
                value = layerwise_perplexity(
                    loaded.adapter, pruning.job_residency(loaded.weights, run_cfg), windows,
                    bench.batch_size, loaded.device, desc=name)
        results[name] = PerplexityResult(**value, **protocol_fields(spec, corpus,
                                                                   run_cfg.model.bos))
        log.info("%s perplexity %.4f over %d windows", name, value["ppl"], value["windows"])
    return results


def _check_context(run_cfg: RunConfig, loaded: LoadedModel) -> None:
    limit = loaded.adapter.context_length
    lengths = {f"benchmark.perplexity.{n}.seqlen": s.seqlen
               for n, s in run_cfg.benchmark.perplexity.items()}
    if METHODS.get(run_cfg.method.name).uses_calibration():
        lengths["calibration.seqlen"] = run_cfg.calibration.seqlen
    speed = run_cfg.benchmark.speed
    lengths.update({f"benchmark.speed.grid[{i}] seqlen": entry[1]
                    for i, entry in enumerate(speed.grid)})
    if speed.decode_tokens:
        lengths["benchmark.speed.decode_prompt + decode_tokens"] = (speed.decode_prompt
                                                                    + speed.decode_tokens)
    if run_cfg.model.bos:  # evaluation windows and calibration samples gain a BOS token
        lengths = {(k if "speed" in k else f"{k} + BOS"): v + ("speed" not in k)
                   for k, v in lengths.items()}
    too_long = [f"{k}={v}" for k, v in lengths.items() if v > limit]
    if too_long:
        raise PrunelabError(f"{', '.join(too_long)} exceeds the context length {limit} of "
                            f"model {run_cfg.model.name!r}. Use a seqlen <= {limit}.")


def _parameter_counts(loaded: LoadedModel) -> ParameterCounts:
    return ParameterCounts(loaded.adapter.prunable_parameter_count(),
                           loaded.adapter.total_parameter_count())


def _layer_sizes(loaded: LoadedModel) -> list[LayerSizes]:
    sizes = []
    for index, layer in enumerate(loaded.adapter.layers):
        g = layer.geometry
        sizes.append(LayerSizes(index, g.num_heads, g.num_kv_heads, g.intermediate_size))
    return sizes


def _job_identity(run_cfg: RunConfig) -> dict[str, Any]:
    """Sweep group and job name from Hydra when it runs the job, else from the config."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return {"group": run_cfg.experiment_name, "name": run_cfg.method.name, "num": None}
    multirun = hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"
    overrides = hydra_cfg.job.override_dirname or run_cfg.method.name
    group = f"{run_cfg.experiment_name}/{Path(hydra_cfg.sweep.dir).name}" if multirun \
        else run_cfg.experiment_name
    return {"group": group, "name": overrides, "num": hydra_cfg.job.num if multirun else None}


def _ensure_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PrunelabError(f"Output folder {str(out_dir)!r} is not writable ({err}). "
                            "Set paths.output_dir (or hydra.run.dir) to a writable folder.") \
            from err


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
