"""Server-side request batching with TF Serving's knobs and semantics (its BasicBatchScheduler).

Requests for the same signature whose inputs agree on everything but the batch dimension queue together; a batch
thread concatenates a batch's requests along dimension 0, runs the signature once and hands each request its
rows. The knobs are TF Serving's `--batching_parameters_file` fields, with its defaults:

* `max_batch_size` (1000): rows in one batch; a single request above it is refused (INVALID_ARGUMENT).
* `batch_timeout_micros` (0): how long an open batch waits to fill. 0 runs whatever is queued as soon as a batch
  thread is free, so batches grow with the load and an idle server adds no latency.
* `max_enqueued_batches` (10): batches waiting per queue; a request that would need one more is refused with
  UNAVAILABLE (HTTP 503) at once, never held or dropped: the client retries or backs off.
* `num_batch_threads` (the CPU count): batches run in parallel.

A signature is batched only when every input and output has a leading batch dimension (the `rank` signature's
scalar `context` does not: those requests run as they come). One request that fails inside a batch (e.g. bytes that
do not parse as a tf.Example) must not fail its neighbours: a failed batch of several requests is rerun one
request at a time, so only the culprit gets the error.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Hashable, Mapping

import grpc
import numpy as np

from .signatures import ServingError

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (the fields this server implements), with its defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            low = 0 if f.name == "batch_timeout_micros" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"batching parameter {f.name}: {v!r} is not an integer >= {low}")

    @classmethod
    def from_file(cls, path: str | Path, base: "BatchingParameters | None" = None,
                  **overrides) -> "BatchingParameters":
        """TF Serving's text-format file (`max_batch_size { value: 128 }`, one field a line or not) over `base`'s
        values; `overrides` (not None) win. A field TF Serving has but this server does not implement is an error,
        not ignored."""
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--batching-parameters-file {path}: cannot read it: {e}") from e
        known = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        rest = re.sub(r"#[^\n]*", "", text)
        for m in re.finditer(r"([A-Za-z_]+)\s*\{\s*value\s*:\s*([^\s}]+)\s*\}", rest):
            name, raw = m.group(1), m.group(2)
            if name not in known:
                raise ValueError(f"{path}: batching parameter {name!r} is not supported by tfrec-zoo serve "
                                 f"(supported: {', '.join(sorted(known))})")
            try:
                values[name] = int(raw)
            except ValueError:
                raise ValueError(f"{path}: {name}: {raw!r} is not an integer") from None
        leftover = re.sub(r"([A-Za-z_]+)\s*\{\s*value\s*:\s*([^\s}]+)\s*\}", "", rest).strip()
        if leftover:
            raise ValueError(f"{path}: cannot parse {leftover[:60]!r}: expected lines like "
                             "'max_batch_size { value: 128 }' (supported: " + ", ".join(sorted(known)) + ")")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{**(base.__dict__ if base is not None else {}), **values})


def queue_full() -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue to which this task was submitted "
                                                     "is full: retry later, or raise max_enqueued_batches")


class _Task:
    __slots__ = ("arrays", "rows", "done", "result", "error")

    def __init__(self, arrays: Arrays, rows: int):
        self.arrays, self.rows = arrays, rows
        self.done = threading.Event()
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


@dataclass
class _Batch:
    created: float
    tasks: list[_Task] = field(default_factory=list)
    rows: int = 0
    closed: bool = False


@dataclass
class _Queue:
    run: Callable[[Arrays], dict[str, np.ndarray]]
    batches: list[_Batch] = field(default_factory=list)


class BatchScheduler:
    """Queues per key (signature + the inputs' non-batch shapes and dtypes) and a pool of batch threads."""

    def __init__(self, params: BatchingParameters):
        self.params = params
        self._cond = threading.Condition()
        self._queues: dict[Hashable, _Queue] = {}
        self._stopped = False
        self.batches_run = 0  # batches executed so far (a batch of one request counts too)
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(params.num_batch_threads)]
        for t in self._threads:
            t.start()

    def run(self, key: Hashable, run: Callable[[Arrays], dict[str, np.ndarray]], arrays: Arrays,
            rows: int) -> dict[str, np.ndarray]:
        """Runs `arrays` (`rows` rows) in a batch with other requests of `key`; blocks until its rows are back."""
        p = self.params
        if rows > p.max_batch_size:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Task size {rows} is larger than maximum input batch size {p.max_batch_size}: "
                               "split the request")
        task = _Task(arrays, rows)
        with self._cond:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            q = self._queues.setdefault(key, _Queue(run))
            batch = q.batches[-1] if q.batches and not q.batches[-1].closed else None
            if batch is None or batch.rows + rows > p.max_batch_size:
                if batch is not None:
                    batch.closed = True
                if len(q.batches) >= p.max_enqueued_batches:
                    raise queue_full()
                batch = _Batch(time.monotonic())
                q.batches.append(batch)
            batch.tasks.append(task)
            batch.rows += rows
            batch.closed = batch.rows >= p.max_batch_size
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def _next(self) -> tuple[_Queue, _Batch] | None:
        """The oldest batch that is full or past its timeout (None once stopped); waits for one."""
        timeout = self.params.batch_timeout_micros / 1e6
        with self._cond:
            while not self._stopped:
                now, soonest = time.monotonic(), None
                for key in list(self._queues):
                    q = self._queues[key]
                    batch = q.batches[0]
                    due = batch.created + timeout
                    if batch.closed or now >= due:
                        q.batches.pop(0)
                        batch.closed = True
                        del self._queues[key]  # to the back of the line: queues take turns
                        if q.batches:
                            self._queues[key] = q
                        return q, batch
                    soonest = due if soonest is None else min(soonest, due)
                self._cond.wait(None if soonest is None else soonest - now)
        return None

    def _work(self) -> None:
        while (picked := self._next()) is not None:
            q, batch = picked
            self.batches_run += 1
            _execute(q.run, batch.tasks)

    def stop(self) -> None:
        """Refuses new requests; queued ones still run; batch threads end when the queues are empty."""
        with self._cond:
            self._stopped = True
            runs = [(q.run, b.tasks) for q in self._queues.values() for b in q.batches]
            self._queues.clear()
            self._cond.notify_all()
        for run, tasks in runs:  # nobody is left to run them: answer them here rather than leave clients hanging
            _execute(run, tasks)
        for t in self._threads:
            t.join(timeout=5)


def _execute(run: Callable[[Arrays], dict[str, np.ndarray]], tasks: list[_Task]) -> None:
    try:
        if len(tasks) == 1:
            out = run(tasks[0].arrays)
        else:
            names = tasks[0].arrays.keys()
            out = run({k: np.concatenate([t.arrays[k] for t in tasks]) for k in names})
        total = sum(t.rows for t in tasks)
        bad = {k: v.shape for k, v in out.items() if v.ndim == 0 or v.shape[0] != total}
        if bad:
            raise ServingError(grpc.StatusCode.INTERNAL, f"batched outputs {bad} do not have the batch's {total} "
                                                         "rows: serve this model without --enable-batching")
    except BaseException as e:  # noqa: BLE001 - every waiting request must get an answer
        if len(tasks) > 1 and isinstance(e, ServingError) and e.code != grpc.StatusCode.INTERNAL:
            for t in tasks:  # one bad request must not fail the others batched with it
                _execute(run, [t])
            return
        for t in tasks:
            t.error = e
            t.done.set()
        return
    start = 0
    for t in tasks:
        t.result = {k: v[start:start + t.rows] for k, v in out.items()}
        start += t.rows
        t.done.set()
