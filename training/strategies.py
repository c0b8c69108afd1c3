"""The tf.distribute strategy of this process and the input it needs (the in-process half of distributed
training; launching the processes of a cluster is training/distribute.py's)."""
from __future__ import annotations

import json
import os

STRATEGIES = ("default", "mirrored", "multi_worker", "parameter_server")


def tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    return json.loads(raw) if raw.strip() else {}


def make_strategy(name: str):
    """The tf.distribute strategy called `name`; multi-worker ones read the cluster from TF_CONFIG.

    Call it first thing in the process: MultiWorkerMirroredStrategy must exist before any other TF op runs.
    For `parameter_server` on a `worker` or `ps` task this starts the task's tf.distribute.Server and blocks
    until the process is killed (those tasks only serve the chief).
    """
    from tfrec_zoo._tf import tf

    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    cfg = tf_config()
    if not cfg.get("cluster"):
        raise ValueError(f"strategy {name}: TF_CONFIG is not set; export TF_CONFIG='{{\"cluster\": ..., \"task\": "
                         "...}}' on every host (see training/distribute.py) or use launch_local / --local-workers")
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver())
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type in ("worker", "ps"):
        run_server(resolver)  # never returns
    if resolver.task_type != "chief":
        raise ValueError(f"strategy parameter_server: TF_CONFIG task type {resolver.task_type!r}; the cluster needs "
                         "one 'chief' (the coordinator running fit) plus 'worker' and 'ps' tasks")
    # variables are placed whole, round-robin over the ps tasks (no partitioner: the zoo's custom layers read
    # tables with tf.gather, which a sharded variable does not support everywhere)
    return tf.distribute.ParameterServerStrategy(resolver)


def run_server(resolver=None) -> None:
    """A PS-cluster worker or ps task: serve the chief until killed."""
    from tfrec_zoo._tf import tf

    resolver = resolver or tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id, protocol=resolver.rpc_layer or "grpc", start=True)
    print(f"[{resolver.task_type} {resolver.task_id}] serving {server.target}", flush=True)
    server.join()


def is_parameter_server(strategy) -> bool:
    from tfrec_zoo._tf import tf

    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def is_multi_worker(strategy) -> bool:
    """MWMS with more than one worker, or PS: the strategies whose input needs setting up here."""
    from tfrec_zoo._tf import tf

    if is_parameter_server(strategy):
        return True
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._num_workers > 1)  # noqa: SLF001 (no public getter)


def is_chief(strategy) -> bool:
    """Whether this process writes run_dir: always outside MWMS (PS: only the chief runs fit); MWMS: worker 0."""
    if is_parameter_server(strategy):
        return True
    return bool(strategy.extended.should_checkpoint)


def fit_inputs(strategy, exp, data, train_data, valid_data, log=print):
    """(train, valid, steps_per_epoch, validation_steps) for `model.fit` under `strategy`.

    Single-process strategies get their inputs back unchanged.
    """
    steps = exp.steps_per_epoch
    if not is_multi_worker(strategy):
        return train_data, valid_data, steps, None
    if is_parameter_server(strategy):
        return _ps_inputs(exp, data, valid_data is not None, log)
    from tfrec_zoo._tf import tf

    # MWMS: every worker builds the same pipeline (same shuffle seed) and tf.data's auto-shard keeps its part.
    # The datasets have one file per split, so FILE sharding (the AUTO default) cannot split them between workers:
    # DATA sharding keeps every N-th batch (each worker reads and parses the whole file; on these data sizes
    # the input is not the bottleneck). With at least one file per worker and a repeated stream (steps_per_epoch
    # set; a finite one asserts the manifest's whole-split cardinality) FILE sharding reads less, so use it then.
    workers = strategy.extended._num_workers  # noqa: SLF001
    by_file = steps is not None and len(data.files("train")) >= workers
    policy = tf.data.experimental.AutoShardPolicy
    train_data = _with_shard_policy(train_data, policy.FILE if by_file else policy.DATA)
    if valid_data is not None:
        valid_data = _with_shard_policy(valid_data, policy.DATA)
    log(f"[distribute] multi_worker: {workers} workers, global batch {exp.batch_size}, "
        f"auto-shard {'FILE' if by_file else 'DATA'}")
    return train_data, valid_data, steps, None


def _with_shard_policy(ds, policy):
    from tfrec_zoo._tf import tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return ds.with_options(options)


def _ps_inputs(exp, data, has_valid, log):
    """PS fit needs DatasetCreators (one pipeline per worker, built on the worker) and fixed epoch lengths."""
    from tfrec_zoo._tf import keras, tf
    from tfrec_zoo.data.reader import make_dataset

    steps = exp.steps_per_epoch or -(-data.rows("train") // exp.batch_size)
    if exp.steps_per_epoch is None:
        log(f"[distribute] parameter_server: steps_per_epoch not set; using one pass: {steps}")
    compression = data.manifest.get("compression", "GZIP")

    def pipeline(ctx, split, batch_size, shuffle_buffer):
        # The coordinator traces this once and runs the same graph on every worker; ParameterServerStrategy
        # passes num_input_pipelines=1 (workers are stateless: any worker may run any step), so the
        # input_context cannot tell workers apart. As TF's PS guide recommends, each worker shuffles the whole
        # split with no fixed seed (and repeats; fit runs steps_per_epoch steps): clearing the seed of this traced
        # graph (not the process' global seed, which train() set) gives every worker, and a restarted one, its
        # own random order instead of the same batches in the same order.
        if not tf.executing_eagerly():
            tf.random.set_seed(None)
        ds = make_dataset(data.spec, data.files(split), ctx.get_per_replica_batch_size(batch_size),
                          shuffle_buffer=shuffle_buffer, seed=None, repeat=True, compression=compression)
        if ctx.num_input_pipelines > 1:  # not the case with ParameterServerStrategy today, kept for correctness
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        from .datasets import with_domain_weights

        return with_domain_weights(ds, exp, data.spec) if split == "train" else ds

    train = keras.utils.experimental.DatasetCreator(
        lambda ctx: pipeline(ctx, "train", exp.batch_size, exp.shuffle_buffer))
    valid, valid_steps = None, None
    if has_valid:
        # inline validation under PS is a random sample of about one pass (each worker draws its own batches);
        # metrics.json stays exact: the chief evaluates the final model over the whole splits
        vbatch = max(exp.batch_size, 4096)
        valid_steps = -(-data.rows("valid") // vbatch)
        valid = keras.utils.experimental.DatasetCreator(
            lambda ctx: pipeline(ctx, "valid", vbatch, min(data.rows("valid"), 100_000)))
    log(f"[distribute] parameter_server: {steps} steps/epoch, DatasetCreator input")
    return train, valid, steps, valid_steps
