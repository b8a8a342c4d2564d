"""The fault matrix: damaged files, NaN, full disks, SIGKILL, a hanging W&B server, concurrent
jobs and damaged cache entries.

Each case asserts what the user is left with (the message, the files, a relaunch), not only
that something raised.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prunelab import atomic, pipeline, pruning
from prunelab.atomic import write_json_atomic
from prunelab.calibration import cache
from prunelab.config.schema import ModelConfig, validate
from prunelab.errors import CorruptFileError, DiskFullError, NonFiniteError
from prunelab.models import surgery
from prunelab.models.adapters import adapter_for
from prunelab.models.fingerprint import file_digest
from prunelab.models.loading import CONVERSION_FILE, _check_conversion, load_model
from prunelab.models.surgery import prune_model, save_pruned
from prunelab.models.tiny import byte_tokenizer
from tests.helpers.plans import keep_all
from tests.helpers.processes import ROOT, run_py
from tests.helpers.tiny import tiny_model

SMOKE = ("model=tiny_llama", "benchmark=smoke", "logger=none")


def _tiny_model(seed: int):
    return tiny_model("mha", layers=2, hidden=32, ffn=40, seed=seed)


def _tiny_folder(folder: Path, seed: int = 0) -> Path:
    model = _tiny_model(seed)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def _load_local(make_cfg, folder: Path, cache: Path):
    run = validate(make_cfg("model=local", f"model.path={folder}", "model.device=cpu",
                            f"paths.cache_dir={cache}"))
    return load_model(run.model, run.paths.cache_dir)


def _pruned_folder(folder: Path) -> Path:
    model = _tiny_model(seed=1)
    adapter = adapter_for(model)
    plan = keep_all(adapter)
    plan.layers[0].heads = plan.layers[0].heads[:2]
    plan.layers[1].channels = plan.layers[1].channels[:8]
    return save_pruned(prune_model(model, adapter, plan), byte_tokenizer(), folder, plan)


def _ppl(record) -> dict[str, float]:
    return {name: result.ppl for name, result in record.metrics.perplexity.items()}


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- damaged model folders -----------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path: Path) -> None:
    path.write_text(path.read_text()[:-7])


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", _truncate),
    ("config.json", _garble),
    ("tokenizer.json", _garble),
    ("tokenizer_config.json", _garble),
])
def test_damaged_local_model_file_is_named_with_a_remedy(make_cfg, tmp_path, name, damage):
    folder = _tiny_folder(tmp_path / "model")
    damage(folder / name)
    with pytest.raises(CorruptFileError) as err:
        _load_local(make_cfg, folder, tmp_path / "cache")
    message = str(err.value)
    assert str(folder / name) in message and "corrupt or truncated" in message
    assert "Copy the folder again" in message and "hub" not in message


def test_damaged_pruning_plan_is_named(make_cfg, tmp_path):
    folder = _pruned_folder(tmp_path / "pruned")
    assert _load_local(make_cfg, folder, tmp_path / "cache").adapter.layers[0].geometry \
        .num_heads == 2
    plan = json.loads((folder / "pruning_plan.json").read_text())
    plan["layers"][0]["heads"] = [0, 1, 2]  # no longer the saved geometry
    (folder / "pruning_plan.json").write_text(json.dumps(plan))
    with pytest.raises(CorruptFileError, match="pruning_plan.json.*do not match config.json"):
        _load_local(make_cfg, folder, tmp_path / "cache")
    (folder / "pruning_plan.json").write_text("{\"layers\": [")
    with pytest.raises(CorruptFileError, match="pruning_plan.json is corrupt"):
        _load_local(make_cfg, folder, tmp_path / "cache")


def test_edited_remote_code_is_refused(make_cfg, tmp_path):
    folder = _pruned_folder(tmp_path / "pruned")
    code = folder / "modeling_prunelab.py"
    header = code.read_text().splitlines()[0]
    assert re.fullmatch(r"# Written by prunelab \S+; SHA-256 of the code below this line: "
                        r"[0-9a-f]{64}", header)
    code.write_text(code.read_text() + "\nimport os  # injected\n")
    with pytest.raises(CorruptFileError, match="modeling_prunelab.py: its code does not match"):
        _load_local(make_cfg, folder, tmp_path / "cache")


def test_damaged_weights_exit_with_one_message(tmp_path):
    folder = _tiny_folder(tmp_path / "model")
    _truncate(folder / "model.safetensors")
    proc = run_py("model=local", f"model.path={folder}", "benchmark=smoke", "logger=none",
                  f"hydra.run.dir={tmp_path / 'job'}", f"paths.cache_dir={tmp_path}/c")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{folder / 'model.safetensors'} is corrupt or truncated" in proc.stdout + proc.stderr
    failure = json.loads((tmp_path / "job" / "failure.json").read_text())
    assert failure["error"].startswith("CorruptFileError")


# -- NaN and Inf ---------------------------------------------------------------------------

def test_nan_weight_names_its_block(make_cfg, tmp_path):
    folder = _tiny_folder(tmp_path / "model")
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NonFiniteError, match=r"block 1 \(model.layers.1.mlp.down_proj.weight\) "
                                             r"holds 1 NaN/Inf"):
        _load_local(make_cfg, folder, tmp_path / "cache")


def test_nan_statistic_stops_before_surgery(make_cfg, tmp_path, monkeypatch):
    real = pruning.run_streaming

    def with_inf(*args, **kwargs):
        stats = real(*args, **kwargs)
        stats[2]["mlp_input"]["var"][0] = float("inf")
        return stats

    monkeypatch.setattr(pruning, "run_streaming", with_inf)
    monkeypatch.setattr(pruning, "prune_model", _no_surgery)
    cfg = make_cfg(*SMOKE, f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(NonFiniteError, match="mlp_input/var of block 2 holds 1 NaN/Inf"):
        pipeline.run(cfg)


def test_nan_module_effect_names_block_and_sub_layer(make_cfg, tmp_path, monkeypatch):
    real = pruning.measure_module_effects

    def with_nan(*args, **kwargs):
        effects = real(*args, **kwargs)
        effects.single[1, 1] = float("nan")
        return effects

    monkeypatch.setattr(pruning, "measure_module_effects", with_nan)
    monkeypatch.setattr(pruning, "prune_model", _no_surgery)
    cfg = make_cfg(*SMOKE, "method=interaction", f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(NonFiniteError, match="module effect of block 1's MLP is NaN or Inf"):
        pipeline.run(cfg)


def _no_surgery(*args, **kwargs):
    raise AssertionError("surgery ran on non-finite statistics")


# -- full disks ----------------------------------------------------------------------------

def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _fsync_fails_for(pattern: str):
    """(module, name, replacement): matching files are written, then the flush finds no space."""
    real = atomic._fsync

    def fsync(path: Path) -> None:
        if re.search(pattern, path.name):
            _enospc()
        real(path)

    return atomic, "_fsync", fsync


def _run_out_of_space(make_cfg, overrides, out: Path, target, name: str, replacement) -> dict:
    """Run the job with ``target.name`` patched to fill the disk; return its failure.json."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(target, name, replacement)
        with pytest.raises(DiskFullError):
            pipeline.run(make_cfg(*overrides, output_dir=out))
    failure = json.loads((out / "failure.json").read_text())
    assert failure["error"].startswith("DiskFullError: No space left on the device")
    assert not (out / "results.json").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "temporary files left"
    return failure


def _relaunch_redoes(make_cfg, overrides, out: Path):
    record = pipeline.run(make_cfg(*overrides, output_dir=out))
    assert (out / "results.json").is_file() and not (out / "failure.json").exists()
    assert record.metrics.perplexity["wikitext2"].ppl > 0
    return record


def test_disk_full_writing_results(make_cfg, tmp_path):
    out, overrides = tmp_path / "job", (*SMOKE, f"paths.cache_dir={tmp_path / 'cache'}")
    _run_out_of_space(make_cfg, overrides, out, *_fsync_fails_for(r"^\.results\.json\."))
    _relaunch_redoes(make_cfg, overrides, out)


def test_disk_full_saving_the_model(make_cfg, tmp_path):
    out = tmp_path / "job"
    overrides = (*SMOKE, "save_model=true", f"paths.cache_dir={tmp_path / 'cache'}")

    def half_written(folder: Path, _model_type: str) -> None:
        (folder / "modeling_prunelab.py").write_text("# half")
        _enospc()

    _run_out_of_space(make_cfg, overrides, out, surgery, "write_remote_code", half_written)
    assert not (out / "model").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".model")]
    _relaunch_redoes(make_cfg, overrides, out)
    assert (out / "model" / "model.safetensors").is_file()


def test_disk_full_writing_the_statistics_cache(make_cfg, tmp_path):
    out, cache_dir = tmp_path / "job", tmp_path / "cache"
    overrides = (*SMOKE, f"paths.cache_dir={cache_dir}")

    def half_written(tensors, path, metadata=None):  # what safetensors raises on a full disk
        Path(path).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    _run_out_of_space(make_cfg, overrides, out, cache, "save_file", half_written)
    assert [p for p in _entries(cache_dir / "statistics") if not p.endswith(".lock")] == []
    record = _relaunch_redoes(make_cfg, overrides, out)
    assert record.pruning.details["calibration"]["cache_hit"] is False


def test_disk_full_writing_zero_shot_task_files(make_cfg, tmp_path):
    out, cache_dir = tmp_path / "job", tmp_path / "cache"
    overrides = ("model=tiny_llama", "benchmark=zeroshot_smoke", "logger=none",
                 "method=dense", f"paths.cache_dir={cache_dir}")
    _run_out_of_space(make_cfg, overrides, out, *_fsync_fails_for(r"\.jsonl\."))
    task_files = [p for p in (cache_dir / "zero_shot").rglob("*") if p.is_file()]
    assert task_files == [], f"partial task files left: {task_files}"
    record = pipeline.run(make_cfg(*overrides, output_dir=out))
    assert record.metrics.zero_shot is not None and not (out / "failure.json").exists()


@pytest.fixture
def full_disk(tmp_path):
    """A real 64 KiB tmpfs, filled to its last 8 KiB (skipped where mounting is refused)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (or a user namespace)")
    try:
        (mount / "filler").write_bytes(b"\0" * (56 * 1024))
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_leaves_no_partial_file(full_disk):
    with pytest.raises(OSError) as err:
        write_json_atomic(full_disk / "results.json", {"rows": ["x" * 100] * 200})
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(Exception, match="No space left on device"):
        _pruned_folder(full_disk / "model")
    assert _entries(full_disk) == ["filler"]
    write_json_atomic(full_disk / "small.json", {"fits": True})  # the space came back
    assert json.loads((full_disk / "small.json").read_text()) == {"fits": True}
    assert (full_disk / "small.json").stat().st_mode & 0o777 == 0o666 & ~atomic._UMASK


# -- SIGKILL during save_model -------------------------------------------------------------

def test_sigkill_during_save_leaves_no_partial_model(tmp_path):
    target, ready = tmp_path / "model", tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from prunelab.models import surgery
        from tests.test_faults import _pruned_folder

        def stalled(folder, _model_type):  # the weights are written; the code never comes
            Path({str(ready)!r}).write_text(str(folder))
            time.sleep(600)

        surgery.write_remote_code = stalled
        _pruned_folder(Path({str(target)!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline, "saver did not start"
            time.sleep(0.2)
        staging = Path(ready.read_text())
        assert (staging / "model.safetensors").is_file()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not target.exists()
    assert staging.name.startswith(".model.") and staging.name.endswith(".tmp")
    saved = _pruned_folder(target)  # a new save next to the dead one's staging folder works
    assert {"model.safetensors", "modeling_prunelab.py", "pruning_plan.json"} <= set(
        _entries(saved))


# -- W&B that never answers ----------------------------------------------------------------

def test_hanging_wandb_server_costs_a_bounded_wait_and_keeps_the_run(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in iter(int, 1)],
                     daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_BASE_URL=f"http://127.0.0.1:{server.getsockname()[1]}",
               WANDB_API_KEY="x" * 40, WANDB_SILENT="true")
    out = tmp_path / "job"
    proc = run_py("model=tiny_llama", "benchmark=smoke", "logger=wandb", "logger.mode=online",
                  "logger.init_timeout=3", f"hydra.run.dir={out}",
                  f"paths.cache_dir={tmp_path / 'cache'}", env=env)
    server.close()
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    record = json.loads((out / "results.json").read_text())
    assert record["metrics"]["perplexity"]["wikitext2"]["ppl"] > 0
    assert record["wandb"]["mode"] == "offline"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert "W&B online run could not start (CommError: Timed out" in log
    assert f"wandb sync {runs[0]}" in log


# -- sweeps that say what failed ----------------------------------------------------------

def test_a_bad_sweep_point_stops_the_launch_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py("-m", "model=tiny_llama", "method=flap", "schedule.ratio=1.5,0.3",
                  "benchmark=smoke", "logger=none", f"hydra.sweep.dir={sweep}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert "1 of 2 sweep point(s) are invalid; nothing was launched" in log
    assert "schedule.ratio=1.5" in log and "ratio must be in [0, 1), got 1.5" in log
    assert not sweep.exists()  # not one job folder


def test_a_sweep_whose_job_fails_finishes_the_others_and_exits_non_zero(tmp_path):
    data = tmp_path / "data"  # WikiText2 only: the C4 calibration point fails when it runs
    data.mkdir()
    (data / "wikitext-2-raw-v1").symlink_to(Path(os.environ["PRUNELAB_DATA_DIR"])
                                            / "wikitext-2-raw-v1")
    sweep = tmp_path / "sweep"
    proc = run_py("-m", "model=tiny_llama", "method=flap",
                  "calibration=c4_train,wikitext2_validation", "benchmark=smoke", "logger=none",
                  f"hydra.sweep.dir={sweep}",
                  env={**os.environ, "PRUNELAB_DATA_DIR": str(data)})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    failed = sweep / "benchmark=smoke,calibration=c4_train,method=flap,model=tiny_llama"
    assert "1 job(s) of the sweep failed" in log and f"  - {failed.name}: DataMissingError" in log
    assert json.loads((failed / "failure.json").read_text())["error"].startswith(
        "DataMissingError")
    assert (sweep / "benchmark=smoke,calibration=wikitext2_validation,method=flap,model=tiny_llama"
            / "results.json").is_file()
    rows = (sweep / "table.md").read_text().splitlines()[2:]
    [failed_row] = [row for row in rows if "calibration=c4_train" in row]
    [finished_row] = [row for row in rows if "calibration=wikitext2_validation" in row]
    assert failed_row.endswith("| – | failed | failed |")  # params, WikiText2, PTB
    assert "failed" not in finished_row and "–" not in finished_row


# -- the statistics cache under concurrency and damage ---------------------------------------

_SLOW_CALIBRATION = """
import sys, time
from prunelab import pruning
from prunelab.cli import configure_logging
from prunelab import pipeline
from tests.conftest import compose_config

real = pruning.run_streaming
def slow(*args, **kwargs):
    time.sleep(4)  # long enough for the other job to ask for the same entry meanwhile
    return real(*args, **kwargs)
pruning.run_streaming = slow
import logging
logging.basicConfig(level=logging.INFO)
configure_logging()
out, cache = sys.argv[1], sys.argv[2]
record = pipeline.run(compose_config(["model=tiny_llama", "benchmark=smoke", "logger=none",
                                      f"paths.cache_dir={cache}"], output_dir=out))
print("CACHE_HIT", record.pruning.details["calibration"]["cache_hit"])
"""


def test_two_jobs_computing_one_entry_compute_it_once(tmp_path):
    cache_dir = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", _SLOW_CALIBRATION, str(tmp_path / f"j{i}"),
                               str(cache_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    hits = sorted(line.split()[-1] for log in logs for line in log.splitlines()
                  if line.startswith("CACHE_HIT"))
    assert hits == ["False", "True"]
    assert any("Another job is computing cache entry" in log for log in logs)
    entries = list((cache_dir / "statistics").glob("*.safetensors"))
    assert len(entries) == 1
    results = [json.loads((tmp_path / f"j{i}" / "results.json").read_text()) for i in range(2)]
    assert [{k: v["ppl"] for k, v in r["metrics"]["perplexity"].items()}
            for r in results] == [{k: v["ppl"] for k, v in results[0]["metrics"]["perplexity"]
                                   .items()}] * 2


def test_damaged_cache_entry_is_recomputed_never_used(make_cfg, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    first = pipeline.run(make_cfg(*SMOKE, f"paths.cache_dir={cache_dir}",
                                  output_dir=tmp_path / "a"))
    (entry,) = (cache_dir / "statistics").glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the last tensor: still a valid safetensors file
    entry.write_bytes(bytes(data))
    second = pipeline.run(make_cfg(*SMOKE, f"paths.cache_dir={cache_dir}",
                                   output_dir=tmp_path / "b"))
    assert "is damaged (checksum mismatch)" in caplog.text
    assert second.pruning.details["calibration"]["cache_hit"] is False
    assert _ppl(second) == _ppl(first)
    assert entry.name == f"{first.pruning.details['calibration']['cache_key']}.safetensors"
    assert entry.read_bytes() != bytes(data)  # rewritten, and valid again
    third = pipeline.run(make_cfg(*SMOKE, f"paths.cache_dir={cache_dir}",
                                  output_dir=tmp_path / "c"))
    assert third.pruning.details["calibration"]["cache_hit"] is True


# -- one model in two places shares its caches -------------------------------------------------

def test_a_model_copied_elsewhere_shares_its_calibration(make_cfg, tmp_path):
    cache_dir = tmp_path / "cache"
    first, second = _tiny_folder(tmp_path / "install1" / "m"), tmp_path / "install2" / "m"
    shutil.copytree(first, second)
    runs = [pipeline.run(make_cfg("model=local", f"model.path={folder}", "model.device=cpu",
                                  "benchmark=smoke", "logger=none", f"paths.cache_dir={cache_dir}",
                                  output_dir=tmp_path / f"job{i}"))
            for i, folder in enumerate((first, second))]
    assert [r.pruning.details["calibration"]["cache_hit"] for r in runs] == [False, True]
    assert _ppl(runs[0]) == _ppl(runs[1])
    other = _tiny_folder(tmp_path / "install3" / "m", seed=5)  # other weights: another entry
    third = pipeline.run(make_cfg("model=local", f"model.path={other}", "model.device=cpu",
                                  "benchmark=smoke", "logger=none", f"paths.cache_dir={cache_dir}",
                                  output_dir=tmp_path / "job3"))
    assert third.pruning.details["calibration"]["cache_hit"] is False


@pytest.mark.integration
def test_the_default_model_from_another_install_is_the_same_model(smollm2, make_cfg, tmp_path):
    """A copy of the embedded GGUF elsewhere (another venv) maps to the same conversion."""
    package = Path(smollm2.source.removeprefix("gguf:"))
    copy = tmp_path / "other-venv" / package.name
    copy.parent.mkdir()
    copy.write_bytes(package.read_bytes())
    cache_dir = Path(validate(make_cfg()).paths.cache_dir)  # where the fixture converted it
    before = _entries(cache_dir / "models")
    loaded = load_model(ModelConfig(name="copy", source="gguf", path=str(copy), device="cpu"),
                        str(cache_dir))
    assert loaded.fingerprint == smollm2.fingerprint
    assert _entries(cache_dir / "models") == before  # no second conversion


# -- nothing unsafe is loaded ----------------------------------------------------------------

def test_no_pickle_anywhere_in_the_package():
    sources = {p: p.read_text() for p in (ROOT / "src").rglob("*.py")}
    offenders = []
    for path, text in sources.items():
        for line in text.splitlines():
            code = line.split("#")[0]
            if re.search(r"\bimport pickle\b|\bpickle\.|\bdill\b|\bjoblib\.load\b", code):
                offenders.append(f"{path}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path}: {line.strip()}")
            if "safe_serialization=False" in code:
                offenders.append(f"{path}: {line.strip()}")
    assert offenders == []


def test_damaged_gguf_conversion_in_the_cache_is_detected(tmp_path):
    folder = _tiny_folder(tmp_path / "converted")
    weights = folder / "model.safetensors"
    (folder / CONVERSION_FILE).write_text(json.dumps(
        {"weights_sha256": {weights.name: file_digest(weights, tmp_path)}}))
    _check_conversion(folder, tmp_path)
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="does not match the SHA-256 recorded"):
        _check_conversion(folder, tmp_path)
    (folder / CONVERSION_FILE).unlink()
    with pytest.raises(CorruptFileError, match="prunelab_conversion.json is missing"):
        _check_conversion(folder, tmp_path)
