"""Multi-process training on tf.distribute over loopback: MWMS (2 workers), PS (chief + 2 workers + 1 ps), and a
worker killed with SIGKILL mid-run: the job fails fast, and the restarted job resumes from the chief's backup.

Each job is a set of real processes started by `launch_local` (its own TF_CONFIG per process); every process is
bounded by launch_local's timeout and killed by process group in its `finally` and again in this file's teardown.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tfrec_zoo.data.builders import build
from training.distribute import _TEST_PAUSE_ENV, DistributedJobError, launch_local, make_strategy
from training.experiment import load_experiment
from training.trainer import train

EXPERIMENTS = Path(__file__).resolve().parents[1] / "training" / "experiments"
STEPS, EPOCHS = 6, 2
JOB_TIMEOUT = 240  # seconds per launch (a bound, not a duration: a job here takes ~30 s on 2 idle cores)


@pytest.fixture(scope="module")
def ml_small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "ml60"
    build("ml-latest-small", out, progress=False, log=lambda *_: None, options={"max_users": 60})
    return out


@pytest.fixture
def procs():
    """Every process a test launches (via on_start); teardown kills any survivor's process group by PID."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
    assert all(p.poll() is not None for p in started)


def exp_for(data: Path, *extra: str):
    return load_experiment(EXPERIMENTS / "din-ml-latest-small.yaml",
                           [f"dataset={data}", f"epochs={EPOCHS}", f"steps_per_epoch={STEPS}", "early_stopping=null",
                            "batch_size=256", "shuffle_buffer=10000", *extra])


def checkpoint_iterations(ckpt: Path) -> int:
    from tfrec_zoo._tf import tf

    return int(tf.train.load_checkpoint(str(ckpt)).get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


def assert_one_final_run(run: Path):
    """Exactly one model and one checkpoint per epoch, written by the chief; no worker temp dirs left."""
    top = sorted(p.name for p in run.iterdir())
    assert top == ["DONE", "backup", "checkpoints", "config.yaml", "distributed.json", "history.csv", "logs",
                   *(["metrics.json"] if (run / "metrics.json").exists() else []), "model",
                   *(["summary.md"] if (run / "summary.md").exists() else [])], top
    assert (run / "model" / "saved_model.pb").exists()
    assert not [p for p in run.rglob("*") if "workertemp" in p.name or ".tmp-" in p.name or ".old-" in p.name]
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.index"))
    assert ckpts == [f"ckpt-{e:03d}.index" for e in range(1, EPOCHS + 1)]
    assert checkpoint_iterations(run / "checkpoints" / f"ckpt-{EPOCHS:03d}") == EPOCHS * STEPS
    info = json.loads((run / "distributed.json").read_text())
    assert info["iterations"] == EPOCHS * STEPS
    return info


def test_multi_worker_mirrored_two_workers(ml_small, tmp_path, procs):
    run = tmp_path / "mwms"
    lines: list[str] = []
    job = launch_local(exp_for(ml_small), run, workers=2, strategy="multi_worker", timeout=JOB_TIMEOUT,
                       log=lines.append, on_start=lambda ps: procs.extend(ps.values()))
    assert job.returncodes == {"worker0": 0, "worker1": 0}
    info = assert_one_final_run(run)
    assert info["cluster"] == {"worker": 2} and info["strategy"] == "multi_worker"
    # both workers trained in lock-step (same all-reduced loss); only the chief evaluated
    assert any(line.startswith("[worker1] [worker:1] done: 12 steps") for line in lines)
    assert "auto-shard DATA" in "\n".join(lines)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 < metrics["test"]["overall"]["like"]["auc"] <= 1.0
    assert len((run / "history.csv").read_text().strip().splitlines()) == EPOCHS + 1


def test_parameter_server_chief_two_workers_one_ps(ml_small, tmp_path, procs):
    run = tmp_path / "ps"
    job = launch_local(exp_for(ml_small), run, workers=2, ps=1, strategy="parameter_server", timeout=JOB_TIMEOUT,
                       log=lambda *_: None, evaluate=False, on_start=lambda ps: procs.extend(ps.values()))
    assert job.returncodes["chief0"] == 0
    assert set(job.returncodes) == {"chief0", "worker0", "worker1", "ps0"}  # the servers were killed when done
    info = assert_one_final_run(run)
    assert info["cluster"] == {"chief": 1, "worker": 2, "ps": 1} and info["strategy"] == "parameter_server"


def test_a_killed_worker_fails_the_job_fast_and_the_rerun_resumes(ml_small, tmp_path, procs):
    run = tmp_path / "killed"
    pause = tmp_path / "paused.txt"
    # worker 1 stops in epoch 2 (after the chief's end-of-epoch-1 backup) and waits to be killed by this test
    env = {_TEST_PAUSE_ENV: json.dumps({"task": "worker:1", "batch": STEPS + 3, "file": str(pause), "seconds": 90})}
    started: dict[str, subprocess.Popen] = {}
    killed = {}

    def on_start(ps):
        started.update(ps)
        procs.extend(ps.values())

    def killer():
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline and not (pause.exists() and pause.read_text().strip()):
            time.sleep(0.05)
        if not pause.exists():
            return
        pid = int(pause.read_text().split()[0])
        assert pid == started["worker1"].pid
        os.kill(pid, signal.SIGKILL)  # kill -9, from outside
        killed["t"] = time.monotonic()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with pytest.raises(DistributedJobError) as err:
        launch_local(exp_for(ml_small), run, workers=2, strategy="multi_worker", timeout=JOB_TIMEOUT, env=env,
                     log=lambda *_: None, evaluate=False, on_start=on_start)
    returned = time.monotonic()
    thread.join(timeout=5)
    assert "t" in killed, "worker 1 never reached the pause"
    fail_fast = returned - killed["t"]
    print(f"\nfail-fast: launch_local raised {fail_fast:.2f}s after worker1 was SIGKILLed")
    assert fail_fast < 30, fail_fast
    assert err.value.failed == "worker1" and err.value.returncodes["worker1"] == -signal.SIGKILL
    assert all(p.poll() is not None for p in started.values())  # nothing outlives launch_local
    assert not (run / "model").exists() and list((run / "backup").rglob("*.index"))

    lines: list[str] = []
    job = launch_local(exp_for(ml_small), run, workers=2, strategy="multi_worker", timeout=JOB_TIMEOUT,
                       log=lines.append, evaluate=False, on_start=lambda ps: procs.extend(ps.values()))
    assert job.returncodes == {"worker0": 0, "worker1": 0}
    text = "\n".join(lines)
    assert f"Epoch {EPOCHS}/{EPOCHS}" in text and "Epoch 1/" not in text  # resumed from the epoch-1 backup
    assert_one_final_run(run)


def test_make_strategy_names_and_errors(monkeypatch, tmp_path):
    from tfrec_zoo._tf import tf

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert make_strategy("default") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="TF_CONFIG is not set"):
        make_strategy("multi_worker")
    with pytest.raises(ValueError, match="unknown strategy 'tpu'"):
        make_strategy("tpu")
    with pytest.raises(ValueError, match="multi_worker or parameter_server"):
        launch_local(exp_for(tmp_path), tmp_path / "run", strategy="mirrored")
    assert not (tmp_path / "run").exists()


def test_mirrored_strategy_in_process(ml_small, tmp_path):
    run = tmp_path / "mirrored"
    result = train(exp_for(ml_small, "epochs=1", "steps_per_epoch=3"), run, strategy=make_strategy("mirrored"),
                   verbose=0, evaluate=False)
    assert int(result.model.optimizer.iterations.numpy()) == 3 and (run / "model" / "saved_model.pb").exists()


def test_the_global_timeout_kills_every_process(ml_small, tmp_path, procs):
    started: dict[str, subprocess.Popen] = {}
    t = time.monotonic()
    with pytest.raises(DistributedJobError, match="timed out") as err:
        launch_local(exp_for(ml_small), tmp_path / "slow", workers=2, strategy="multi_worker", timeout=2,
                     log=lambda *_: None, on_start=lambda ps: (started.update(ps), procs.extend(ps.values())))
    assert err.value.timed_out and time.monotonic() - t < 15
    assert len(started) == 2 and all(p.poll() is not None for p in started.values())
