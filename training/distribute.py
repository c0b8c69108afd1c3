"""Distributed training on tf.distribute: MultiWorkerMirroredStrategy (sync) and ParameterServerStrategy (async).

Nothing here is home-made: the strategies, all-reduce, variable placement, BackupAndRestore and the per-worker
temp dirs are TensorFlow's / tf_keras'. This module only (1) builds the strategy from TF_CONFIG, (2) adapts the
input pipeline for multi-worker fit, and (3) launches a whole cluster on one host (`launch_local`).

Running on several hosts
------------------------
Every process runs the *same* command; only its TF_CONFIG differs. All hosts must see the dataset directory and
the run directory at the same paths (a shared filesystem such as NFS): the chief writes run_dir, restarted
workers restore from the chief's run_dir/backup, PS workers open the TFRecord files by path. Build the dataset
once beforehand (`tfrec-zoo data build NAME`, or set `dataset:` to a directory) and give the same --run-dir and
the same experiment / --set overrides everywhere. Each address is HOST:PORT of that task's gRPC server: any free
TCP port on that host (e.g. 2222), reachable from every other host of the cluster.

MultiWorkerMirroredStrategy, N hosts (synchronous all-reduce; worker 0 is the chief):

    # on host i = 0 .. N-1 (here N = 2)
    export TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": i}}'
    tfrec-zoo train EXP --strategy multi_worker --run-dir /shared/runs/NAME

  batch_size is the global batch, split across the workers. Only worker 0 writes run_dir (model/, metrics.json,
  history.csv, checkpoints/, backup/); the others write into `workertemp_<i>` dirs that tf_keras deletes. The
  workers wait for each other at start. If one dies the others fail too: within seconds when its process dies
  (its sockets close; 3.4 s measured on loopback), at TF's collective health check (tens of seconds) when its
  whole host vanishes. Restart every process with the same command: the run resumes from run_dir/backup.

ParameterServerStrategy, 1 chief + W workers + P ps (asynchronous; the chief is the coordinator running fit):

    CLUSTER='{"chief": ["c:2222"], "worker": ["w0:2222", "w1:2222"], "ps": ["p0:2222"]}'
    # first, on each worker / ps host (task type "worker" or "ps", index k within its type):
    export TF_CONFIG='{"cluster": '"$CLUSTER"', "task": {"type": "ps", "index": 0}}'
    tfrec-zoo train EXP --strategy parameter_server            # starts a tf.distribute.Server and blocks
    # then on the chief host:
    export TF_CONFIG='{"cluster": '"$CLUSTER"', "task": {"type": "chief", "index": 0}}'
    tfrec-zoo train EXP --strategy parameter_server --run-dir /shared/runs/NAME

  Kill the worker / ps processes when the chief has finished. Set steps_per_epoch (default: one pass over the
  train rows per epoch). Workers are stateless: if one dies the coordinator reschedules its steps on the others;
  if a ps or the chief dies, restart them all and the chief resumes from run_dir/backup (epoch granularity).

One host (tests, demos): `launch_local(EXP, RUN_DIR, workers=N, strategy=...)` (CLI `--local-workers N`) starts
the processes on 127.0.0.1 with free ports and stops them all as soon as one of them fails.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .strategies import (  # noqa: F401  (re-exported: the launcher and its users take them from here)
    STRATEGIES, fit_inputs, is_chief, is_multi_worker, is_parameter_server, make_strategy, run_server, tf_config,
)

_REPO = Path(__file__).resolve().parents[1]
# test-only hook (set by tests/test_distributed.py, never by users): {"task": "worker:1", "batch": 9, "file": F}
# makes that task write its pid to F at its N-th train batch and wait there, so the test can kill -9 it mid-run
_TEST_PAUSE_ENV = "TFREC_ZOO_TEST_PAUSE"


# --------------------------------------------------------------------------------------------- local clusters


class DistributedJobError(RuntimeError):
    """A local multi-process job failed (a process died, or the global timeout passed); all were stopped."""

    def __init__(self, message: str, returncodes: dict[str, int | None], seconds: float, failed: str | None = None,
                 timed_out: bool = False):
        super().__init__(message)
        self.returncodes, self.seconds, self.failed, self.timed_out = returncodes, seconds, failed, timed_out


@dataclass
class LocalJob:
    run_dir: Path
    strategy: str
    returncodes: dict[str, int | None]
    seconds: float
    info: dict[str, Any]  # run_dir/distributed.json written by the chief


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free TCP ports (held open together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def local_cluster(strategy: str, workers: int, ps: int = 1, host: str = "127.0.0.1") -> tuple[dict, list]:
    """(cluster spec, [(task_type, index)] in start order) for a one-host cluster."""
    if strategy == "multi_worker":
        if workers < 1:
            raise ValueError("multi_worker: workers must be >= 1")
        tasks = [("worker", i) for i in range(workers)]
    elif strategy == "parameter_server":
        if workers < 1 or ps < 1:
            raise ValueError("parameter_server: needs workers >= 1 and ps >= 1")
        # servers first, the chief (coordinator) last
        tasks = [("ps", i) for i in range(ps)] + [("worker", i) for i in range(workers)] + [("chief", 0)]
    else:
        raise ValueError(f"launch_local: strategy must be multi_worker or parameter_server, got {strategy!r}")
    ports = iter(free_ports(len(tasks), host))
    cluster: dict[str, list[str]] = {}
    for kind, _ in tasks:
        cluster.setdefault(kind, []).append(f"{host}:{next(ports)}")
    return cluster, tasks


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (it leads its own session), then reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
        pass


def launch_local(exp, run_dir: str | Path, *, workers: int = 2, strategy: str = "multi_worker", ps: int = 1,
                 timeout: float = 3600, overrides: list[str] | None = None, log: Callable[[str], None] = print,
                 evaluate: bool = True, env: dict[str, str] | None = None,
                 on_start: Callable[[dict[str, subprocess.Popen]], None] | None = None) -> LocalJob:
    """Run `exp` (a YAML path or an Experiment) as a cluster of local processes on 127.0.0.1; what
    `tfrec-zoo train EXP --strategy S --local-workers N` does.

    multi_worker: N workers (worker 0 = chief). parameter_server: `ps` ps + N workers + 1 chief. Each process
    gets its own TF_CONFIG and free ports; its output is streamed to `log` prefixed with its task. The job
    succeeds when all MWMS workers / the PS chief exit 0. As soon as any process exits non-zero (or a PS server
    exits at all: PS could carry on without a worker, a local job is for tests and demos), or `timeout` seconds
    pass, every other process is killed (by process group) and DistributedJobError is raised. Nothing outlives
    this call. A rerun on the same run_dir resumes from its backup. `overrides` (`--set k=v`) apply to a YAML path.
    """
    from .experiment import Experiment

    cluster, tasks = local_cluster(strategy, workers, ps)  # validates the arguments before anything is created
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tfrec-zoo-launch-"))
    procs: dict[str, subprocess.Popen] = {}
    pumps: list[threading.Thread] = []
    tails: dict[str, deque] = {}
    lock = threading.Lock()
    try:
        child_overrides: list[str] = []  # an Experiment object comes with its overrides applied
        if isinstance(exp, Experiment):
            import yaml

            exp_path = tmp / "experiment.yaml"
            exp_path.write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
        else:
            from .experiment import load_experiment

            exp_path = Path(exp).resolve()
            exp = load_experiment(exp_path, overrides)
            child_overrides = list(overrides or [])
        from .datasets import experiment_data

        experiment_data(exp, log)  # a named dataset (or subset) is built once here, not by every process at once
        start = time.monotonic()  # the timeout bounds the processes
        base_env = {**os.environ, **(env or {})}
        base_env.setdefault("TF_USE_LEGACY_KERAS", "1")
        base_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        base_env["PYTHONUNBUFFERED"] = "1"
        base_env["PYTHONPATH"] = os.pathsep.join([str(_REPO), *filter(None, [base_env.get("PYTHONPATH")])])
        if strategy == "parameter_server":
            base_env.setdefault("GRPC_FAIL_FAST", "use_caller")  # as in TF's PS guide: RPCs to a dead task fail
        cmd = [sys.executable, "-m", "training.distribute", "worker", "--exp", str(exp_path),
               "--run-dir", str(run_dir), "--strategy", strategy]
        for item in child_overrides:
            cmd += ["--set", item]
        if not evaluate:
            cmd.append("--no-evaluate")
        for kind, index in tasks:
            name = f"{kind}{index}"
            task_env = {**base_env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                             "task": {"type": kind, "index": index}})}
            proc = subprocess.Popen(cmd, env=task_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1, start_new_session=True, cwd=str(_REPO))
            procs[name] = proc
            tails[name] = deque(maxlen=40)
            pump = threading.Thread(target=_pump, args=(proc, name, tails[name], log, lock), daemon=True)
            pump.start()
            pumps.append(pump)
        log(f"[launch] {strategy}: {', '.join(f'{n} pid {p.pid}' for n, p in procs.items())}; cluster {cluster}")
        if on_start is not None:
            on_start(dict(procs))
        deadline = start + timeout
        while True:
            codes = {n: p.poll() for n, p in procs.items()}
            failed = [n for n, rc in codes.items() if rc is not None and rc != 0]
            if strategy == "parameter_server":  # ps / worker servers never exit on their own
                failed += [n for n, rc in codes.items() if rc == 0 and not n.startswith("chief")]
            if failed:
                name = failed[0]
                seconds = time.monotonic() - start
                for p in procs.values():
                    _kill_group(p)
                for t in pumps:
                    t.join(timeout=2)
                codes = {n: p.returncode for n, p in procs.items()}
                tail = "\n".join(tails[name])
                raise DistributedJobError(f"{name} exited with code {codes[name]} after {seconds:.1f}s; stopped the "
                                          f"other processes ({codes}). Last lines of {name}:\n{tail}",
                                          codes, seconds, failed=name)
            done = (codes["chief0"] == 0) if strategy == "parameter_server" else all(rc == 0 for rc in codes.values())
            if done:
                break
            if time.monotonic() > deadline:
                seconds = time.monotonic() - start
                for p in procs.values():
                    _kill_group(p)
                raise DistributedJobError(f"{strategy} job timed out after {seconds:.0f}s (limit {timeout:.0f}s); "
                                          f"killed all processes", {n: p.returncode for n, p in procs.items()},
                                          seconds, timed_out=True)
            time.sleep(0.05)
        seconds = time.monotonic() - start
        for p in procs.values():  # PS servers: the job is over
            _kill_group(p)
        for t in pumps:
            t.join(timeout=2)
        info_file = run_dir / "distributed.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        log(f"[launch] {strategy} finished in {seconds:.1f}s")
        return LocalJob(run_dir, strategy, {n: p.returncode for n, p in procs.items()}, seconds, info)
    finally:
        for p in procs.values():
            _kill_group(p)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _pump(proc: subprocess.Popen, name: str, tail: deque, log, lock: threading.Lock) -> None:
    for line in iter(proc.stdout.readline, ""):
        line = line.rstrip("\n")
        tail.append(line)
        with lock:
            log(f"[{name}] {line}")
    proc.stdout.close()


# ------------------------------------------------------------------------------- the processes' entry point


def _pause_hook(task: str):
    """The test-only pause (see _TEST_PAUSE_ENV), or None."""
    raw = os.environ.get(_TEST_PAUSE_ENV)
    if not raw:
        return None
    cfg = json.loads(raw)
    if cfg["task"] != task:
        return None
    from tfrec_zoo._tf import keras

    class Pause(keras.callbacks.Callback):
        n = 0

        def on_train_batch_end(self, batch, logs=None):
            self.n += 1
            if self.n == int(cfg["batch"]):
                Path(cfg["file"]).write_text(f"{os.getpid()} {time.time()}")
                time.sleep(float(cfg.get("seconds", 120)))
                os._exit(70)  # nobody killed us: fail loudly rather than hang

    return Pause()


def run_task(exp, run_dir: str | Path, strategy_name: str, *, evaluate: bool = True, verbose: int = 2,
             callbacks: list | None = None, log=print):
    """This process' part of a (possibly multi-worker) run: `tfrec-zoo train EXP --strategy S` without
    --local-workers, on every host with its own TF_CONFIG. Builds the strategy first (a PS worker / ps task
    serves from there until killed and never returns), trains, and on the chief writes run_dir/distributed.json.
    Returns train()'s RunResult (metrics are empty on non-chief workers).
    """
    strategy = make_strategy(strategy_name)  # first: MWMS must exist before other TF ops; PS servers block here
    from dataclasses import replace

    from .trainer import train

    if exp.strategy != strategy_name:  # record how the run was trained (and resume only with the same strategy)
        exp = replace(exp, strategy=strategy_name)
    task = tf_config().get("task", {})
    name = f"{task.get('type', 'local')}:{task.get('index', 0)}"
    result = train(exp, run_dir, strategy=strategy, verbose=verbose, evaluate=evaluate, callbacks=callbacks, log=log)
    iterations = int(result.model.optimizer.iterations.numpy())
    log(f"[{name}] done: {iterations} steps in {result.seconds:.1f}s")
    if is_chief(strategy):
        info = {"strategy": strategy_name, "cluster": {k: len(v) for k, v in tf_config().get("cluster", {}).items()},
                "iterations": iterations, "epochs": exp.epochs, "fit_seconds": round(result.seconds, 2)}
        (Path(run_dir) / "distributed.json").write_text(json.dumps(info, indent=1) + "\n")
    return result


def worker_main(argv: list[str] | None = None) -> int:
    """`python -m training.distribute worker --exp F --run-dir D --strategy S`: one task of a local cluster."""
    p = argparse.ArgumentParser(prog="python -m training.distribute")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run one task of a multi-worker job (TF_CONFIG names the task)")
    w.add_argument("--exp", required=True)
    w.add_argument("--run-dir", required=True)
    w.add_argument("--strategy", required=True, choices=STRATEGIES)
    w.add_argument("--set", action="append", default=[])
    w.add_argument("--no-evaluate", action="store_true")
    args = p.parse_args(argv)
    from .experiment import load_experiment

    exp = load_experiment(args.exp, args.set)
    task = tf_config().get("task", {})
    hook = _pause_hook(f"{task.get('type', 'local')}:{task.get('index', 0)}")
    run_task(exp, args.run_dir, args.strategy, evaluate=not args.no_evaluate, callbacks=[hook] if hook else None,
             log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
