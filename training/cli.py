"""The `tfrec-zoo` command line. It sits on top: nothing imports it.

    tfrec-zoo spec validate FILE            check a feature spec; every mistake names file, path and fix
    tfrec-zoo spec show FILE                the parsed spec as a table
    tfrec-zoo data list                     the real datasets `data build` knows
    tfrec-zoo data build NAME [--out DIR]   build a real dataset's TFRecords (default: data/NAME)
    tfrec-zoo data write --spec S --input F --out DIR [--split time|random|leave_one_out|none]
    tfrec-zoo data check DIR                scan a dataset and list every problem
    tfrec-zoo train EXP.yaml [--set k=v]    train a zoo model (a run directory under runs/)
    tfrec-zoo evaluate RUN_DIR              re-evaluate a finished run
    tfrec-zoo predict RUN_DIR --split S --out F.parquet [--data DIR] [--feed SEQ=OTHER]
                                                          batch predictions with the examples' keys
    tfrec-zoo tune EXP.yaml [--max-trials N] Keras Tuner search over the experiment's `tune:` block
    tfrec-zoo export RUN_DIR --name NAME    TF Serving SavedModel into saved_models/NAME/<version>/
    tfrec-zoo export RUN_DIR --name NAME --format tflite   on-device: saved_models/NAME.tflite/ (built-in ops)
    tfrec-zoo serve [--model-base-dir saved_models] [--grpc-port 8500] [--rest-port 8501]   TF Serving APIs
    tfrec-zoo demo                          build ml-latest-small from seeds/, train DIN on it, print its metrics
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cmd_spec(args) -> int:
    from tfrec_zoo.features import load_spec

    spec = load_spec(args.file)
    if args.action == "validate":
        print(f"{args.file}: ok ({len(spec.inputs)} input features, {len(spec.labels)} labels, "
              f"fingerprint {spec.fingerprint[:12]})")
        return 0
    print(f"spec {spec.name}  ({spec.source})\n{spec.description}\n")
    rows = []
    for f in spec.features:
        detail = ""
        if f.kind in ("id", "domain", "multi_hot"):
            detail = f"table={spec.table_of(f.name)} dim={f.embedding_dim}"
            detail += f" hash={f.hash_buckets}" if f.hash_buckets else ""
        elif f.kind == "sequence":
            detail = f"max_len={f.max_len} fields=" + ",".join(f"{sf.name}:{sf.kind}" for sf in f.fields)
        elif f.kind in ("vector", "text"):
            detail = f"dim={f.dim}"
        elif f.kind == "dense":
            detail = f"norm={f.normalization}" + (f" buckets={f.buckets}" if f.buckets else "")
        elif f.kind == "label":
            detail = f"task={f.task} type={f.type}" + (f" mask={f.mask}" if f.mask else "")
        rows.append((f.name, f.kind, detail))
    w = max(len(r[0]) for r in rows)
    for name, kind, detail in rows:
        print(f"  {name:<{w}}  {kind:<9}  {detail}")
    print("\nembedding tables: " + ", ".join(f"{t}<-{'+'.join(c)}" for t, c in spec.tables().items()))
    return 0


def _cmd_data_write(args) -> int:
    import numpy as np

    from tfrec_zoo.data import write_dataset
    from tfrec_zoo.data.interactions import (
        assign_splits, attach_histories, chronological, describe_splits, numeric_time, split_frames,
    )
    from tfrec_zoo.data.tables import coerce_list_columns, read_table
    from tfrec_zoo.features.spec import check_history_sources, load_spec

    spec = load_spec(args.spec)
    # each row keeps its file line (`__line__`), so that errors after sorting and splitting still name it
    df = read_table(args.input)
    df = coerce_list_columns(df, spec, args.input)
    user = args.user_col or spec.keys.get("user")
    time = args.time_col or spec.keys.get("time")
    seq_fields = [sf.name for s in spec.of_kind("sequence") for sf in s.fields]
    log_mode = bool(seq_fields) and not all(c in df.columns for c in seq_fields)
    if (log_mode or args.split in ("time", "leave_one_out")) and not (user and time):
        raise SystemExit(f"error: {args.input}: building histories or a {args.split} split needs the user and time "
                         "columns: set `keys: {user: ..., time: ...}` in the spec or pass --user-col/--time-col")
    for col in (user, time) if (log_mode or args.split in ("time", "leave_one_out")) else ():
        if col not in df.columns:
            raise SystemExit(f"error: {args.input}: column {col!r} missing (columns: {list(df.columns)[:20]})")
    if user and time and user in df.columns and time in df.columns:
        df = chronological(numeric_time(df, time, args.input), user, time)
    if args.split == "none":
        ranks = np.zeros(len(df), np.int8)
    elif args.split == "random":
        ranks = assign_splits(df, user or df.columns[0], "random", valid_frac=args.valid_frac,
                              test_frac=args.test_frac, seed=args.seed)
    else:
        ranks = assign_splits(df, user, args.split, valid_frac=args.valid_frac, test_frac=args.test_frac)
    if log_mode:
        check_history_sources(spec, df.columns, str(args.input))  # names the field and the data's columns
        print(f"{args.input}: interaction log; building histories for "
              f"{', '.join(s.name for s in spec.of_kind('sequence'))} from earlier interactions of each {user}")
        df = attach_histories(df, spec, user, ranks)
    splits = split_frames(df, ranks)
    notes = _check_split_sizes(args, splits, len(df))
    manifest = write_dataset(splits, spec, args.out, source=str(args.input), rows_per_shard=args.rows_per_shard,
                             compression="" if args.compression == "none" else args.compression,
                             extra={"split": args.split})
    print(describe_splits(splits, spec.keys.get("user"), spec.keys.get("item")).to_string())
    _print_truncated(manifest)
    for note in notes:
        print(f"note: {args.input}: {note}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


def _check_split_sizes(args, splits: dict, rows: int) -> list[str]:
    """An empty train split is an error; a valid / test split the fractions leave empty is named (not written)."""
    if not len(splits.get("train", ())):
        raise ValueError(f"{args.input}: --split {args.split} leaves the train split empty ({rows} rows in all). "
                         "Fix: lower --valid-frac / --test-frac, or give more rows")
    notes = []
    for name, frac in (("valid", args.valid_frac), ("test", args.test_frac)):
        if name in splits or args.split == "none" or (args.split != "leave_one_out" and frac <= 0):
            continue
        why = {"time": f"floor({frac:g} x each user's rows) is 0 for every user",
               "random": f"no row fell in it at --{name}-frac {frac:g}",
               "leave_one_out": "every user has fewer than 3 rows"}[args.split]
        notes.append(f"the {name} split is empty ({why}); it is not written")
    return notes


def _print_truncated(manifest: dict) -> None:
    """One line: the rows whose lists were longer than their feature's max_len (the last max_len values kept)."""
    truncated = (manifest.get("extra") or {}).get("truncated") or {}
    per_feature: dict[str, dict[str, int]] = {}
    for split, counts in truncated.items():
        for feature, n in counts.items():
            per_feature.setdefault(feature, {})[split] = n
    if per_feature:
        parts = [f"{feature} {sum(c.values())} rows (" + ", ".join(f"{s} {n}" for s, n in c.items()) + ")"
                 for feature, c in per_feature.items()]
        print("truncated to max_len (the last max_len values kept; manifest extra.truncated): " + "; ".join(parts))


def _cmd_data_check(args) -> int:
    from tfrec_zoo.data.check import check_dataset

    total, problems = check_dataset(args.dir, max_problems=args.max_problems)
    for p in problems:
        print(p)
    print(f"{args.dir}: {total} records scanned, {len(problems)} problem(s)")
    return 1 if problems else 0


def _cmd_data_build(args) -> int:
    from tfrec_zoo.data.builders import build
    from tfrec_zoo.paths import default_data_dir

    out = Path(args.out) if args.out else default_data_dir() / args.name
    options = {}
    if args.max_users is not None:
        options["max_users"] = args.max_users
    _print_truncated(build(args.name, out, raw_dir=args.raw, options=options))
    return 0


def _cmd_data_list(args) -> int:
    from tfrec_zoo.data.builders import BUILDERS, _load_all

    _load_all()
    for name, b in sorted(BUILDERS.items()):
        print(f"  {name:<26} {b.doc}")
    return 0


def _experiment_path(name: str) -> Path:
    path = Path(name)
    if path.exists():
        return path
    packaged = Path(__file__).parent / "experiments" / (name if name.endswith(".yaml") else f"{name}.yaml")
    if packaged.exists():
        return packaged
    raise FileNotFoundError(f"experiment {name!r} not found (neither a file nor one of training/experiments/)")


def _cmd_train(args) -> int:
    import json

    from training.evaluation import format_table
    from training.experiment import load_experiment
    from training.trainer import new_run_dir, train

    exp = load_experiment(_experiment_path(args.experiment), args.set)
    strategy = args.strategy or exp.strategy
    distributed = strategy in ("multi_worker", "parameter_server")
    if args.local_workers and not distributed:
        raise ValueError("--local-workers needs --strategy multi_worker or parameter_server")
    if distributed and not args.local_workers and not args.run_dir:
        raise ValueError(f"--strategy {strategy} on a cluster needs an explicit --run-dir shared by every host "
                         "(a timestamped default would differ between hosts)")
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(exp, args.runs_root)
    print(f"[train] {exp.name}: model {exp.model} on {exp.dataset} ({strategy}) -> {run_dir}")
    if args.local_workers:
        from training.distribute import DistributedJobError, launch_local

        try:
            launch_local(_experiment_path(args.experiment), run_dir, workers=args.local_workers, strategy=strategy,
                         ps=args.ps, timeout=args.timeout, overrides=args.set)
        except DistributedJobError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(format_table(json.loads((run_dir / "metrics.json").read_text())))
        return 0
    try:
        if distributed:
            from training.distribute import run_task

            result = run_task(exp, run_dir, strategy, verbose=2 if args.quiet else 1)
        else:
            from training.distribute import make_strategy

            result = train(exp, run_dir, strategy=make_strategy(strategy), verbose=2 if args.quiet else 1)
    except Exception as e:  # noqa: BLE001 - only a damaged shard is explained; anything else is re-raised as is
        from training.datasets import explain_read_failure

        message = explain_read_failure(exp.dataset, e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    if result.metrics:
        print(f"[train] {result.seconds:.1f}s; metrics ({run_dir}/metrics.json):")
        print(format_table(result.metrics))
    return 0


def _cmd_evaluate(args) -> int:
    from training.evaluation import format_table
    from training.trainer import evaluate_run

    print(format_table(evaluate_run(args.run_dir)))
    return 0


def _cmd_predict(args) -> int:
    from training.predict import predict_run

    feed = {}
    for item in args.feed or []:
        mine, sep, theirs = item.partition("=")
        if not sep or not mine or not theirs:
            raise ValueError(f"--feed {item}: expected MODEL_SEQUENCE=DATA_SEQUENCE, e.g. cloud_history=device_history")
        feed[mine] = theirs
    predict_run(args.run_dir, args.split, args.out, data_dir=args.data, batch_size=args.batch_size, feed=feed)
    return 0


def _cmd_tune(args) -> int:
    from training.experiment import load_experiment
    from training.tuning import tune

    path = _experiment_path(args.experiment)
    exp = load_experiment(path, args.set)
    # not timestamped: a chief, its workers and a resumed search all share one directory
    out = Path(args.out or Path(args.runs_root) / f"{exp.name}-tune")
    result = tune(exp, out, args.max_trials, verbose=2 if args.quiet else 1, base=load_experiment(path),
                  overrides=args.set)
    return 0 if result.role == "worker" or result.best else 1


def _cmd_export(args) -> int:
    from training.exporting import export_run, export_tflite

    if args.format == "tflite":
        export_tflite(args.run_dir, args.name, args.base_dir)
        return 0
    # only the options given: each model has its own defaults and rejects options that do not apply to it
    options = {k: v for k, v in (("k", args.k), ("gsu", args.gsu), ("pq_subspaces", args.pq_subspaces),
                                 ("scann", False if args.no_scann else None),
                                 ("raw_text", True if args.raw_text else None)) if v is not None}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option {item}: expected KEY=VALUE")
        import yaml

        options[key.strip()] = yaml.safe_load(value)
    export_run(args.run_dir, args.name, args.base_dir, keep=args.keep, warmup=args.warmup, options=options)
    return 0


def _cmd_demo(args) -> int:
    from tfrec_zoo.data import open_dataset
    from tfrec_zoo.data.builders import build
    from tfrec_zoo.paths import default_data_dir

    out = Path(args.out) if args.out else default_data_dir() / "ml-latest-small"
    print(f"[demo] building ml-latest-small from seeds/ into {out}")
    build("ml-latest-small", out)
    ds = open_dataset(out)
    feats, labels = next(iter(ds.dataset("train", 4)))
    print("[demo] one training batch:")
    for k, v in feats.items():
        print(f"  {k:<16} {str(v.dtype.name):<8} {tuple(v.shape)}")
    for k, v in labels.items():
        print(f"  label {k:<10} {v.numpy().tolist()}")
    from training.evaluation import format_table
    from training.experiment import load_experiment
    from training.trainer import new_run_dir, train

    exp = load_experiment(_experiment_path("din-ml-latest-small"), [f"dataset={out}"])
    run_dir = new_run_dir(exp, args.runs_root)
    print(f"[demo] training {exp.model} ({exp.epochs} epochs) -> {run_dir}")
    result = train(exp, run_dir, verbose=2)
    print(f"[demo] trained in {result.seconds:.1f}s; metrics:")
    print(format_table(result.metrics))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfrec-zoo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("spec", help="validate or show a feature spec")
    sp.add_argument("action", choices=["validate", "show"])
    sp.add_argument("file")
    sp.set_defaults(fn=_cmd_spec)

    dp = sub.add_parser("data", help="write, check and build TFRecord datasets").add_subparsers(dest="data_cmd",
                                                                                                 required=True)
    w = dp.add_parser("write", help="CSV/Parquet + spec -> TFRecords")
    w.add_argument("--spec", required=True)
    w.add_argument("--input", required=True, help=".csv, .tsv or .parquet: one row per example or an interaction log")
    w.add_argument("--out", required=True)
    w.add_argument("--split", default="time", choices=["time", "random", "leave_one_out", "none"])
    w.add_argument("--valid-frac", type=float, default=0.1)
    w.add_argument("--test-frac", type=float, default=0.1)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--user-col")
    w.add_argument("--time-col")
    w.add_argument("--rows-per-shard", type=int, default=200_000)
    w.add_argument("--compression", default="GZIP", choices=["GZIP", "ZLIB", "none"])
    w.set_defaults(fn=_cmd_data_write)

    c = dp.add_parser("check", help="scan a dataset and list every problem")
    c.add_argument("dir")
    c.add_argument("--max-problems", type=int, default=1000)
    c.set_defaults(fn=_cmd_data_check)

    b = dp.add_parser("build", help="build a real dataset")
    b.add_argument("name")
    b.add_argument("--out")
    b.add_argument("--raw", help="the raw files' directory (default: seeds/ or ../shared/datasets)")
    b.add_argument("--max-users", type=int, help="only the first N users by id (a quick deterministic subset)")
    b.set_defaults(fn=_cmd_data_build)

    ls = dp.add_parser("list", help="list the real datasets")
    ls.set_defaults(fn=_cmd_data_list)

    t = sub.add_parser("train", help="train a zoo model from an experiment YAML")
    t.add_argument("experiment", help="a YAML file or the name of one in training/experiments/")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (dotted)")
    t.add_argument("--run-dir", help="the run directory (default: runs/NAME-TIMESTAMP); an existing one resumes")
    t.add_argument("--runs-root", default="runs")
    t.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars")
    t.add_argument("--strategy", choices=["default", "mirrored", "multi_worker", "parameter_server"],
                   help="tf.distribute strategy (default: the experiment's); clusters come from TF_CONFIG")
    t.add_argument("--local-workers", type=int, metavar="N",
                   help="run the job as N local worker processes on 127.0.0.1 (try a cluster before you have one)")
    t.add_argument("--ps", type=int, default=1, help="parameter servers for --local-workers with parameter_server")
    t.add_argument("--timeout", type=float, default=3600, help="seconds before a --local-workers job is stopped")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("evaluate", help="re-evaluate a finished run directory")
    e.add_argument("run_dir")
    e.set_defaults(fn=_cmd_evaluate)

    pr = sub.add_parser("predict", help="write a run's predictions on a split, with the examples' keys")
    pr.add_argument("run_dir")
    pr.add_argument("--split", required=True, help="train, valid, test, ...")
    pr.add_argument("--out", required=True, help="a .parquet or .csv file")
    pr.add_argument("--data", help="another dataset directory with the model's features (default: the run's)")
    pr.add_argument("--batch-size", type=int, default=4096)
    pr.add_argument("--feed", action="append", metavar="SEQ=OTHER",
                    help="score with the data's sequence OTHER in place of the model's SEQ (same fields and length), "
                         "e.g. cloud_history=device_history: a cloud refresh; repeatable")
    pr.set_defaults(fn=_cmd_predict)

    tu = sub.add_parser("tune", help="Keras Tuner search (random, bayesian, hyperband) over `tune:`")
    tu.add_argument("experiment")
    tu.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    tu.add_argument("--out", help="search directory (default: runs/NAME-tune); an existing one resumes")
    tu.add_argument("--max-trials", type=int)
    tu.add_argument("--runs-root", default="runs")
    tu.add_argument("--quiet", action="store_true")
    tu.set_defaults(fn=_cmd_tune)

    ex = sub.add_parser("export", help="export a trained run for TF Serving (versioned, with warmup, parity-checked)")
    ex.add_argument("run_dir")
    ex.add_argument("--name", required=True, help="the model name (a directory under --base-dir)")
    ex.add_argument("--base-dir", default="saved_models")
    ex.add_argument("--keep", type=int, default=5, help="how many newest versions to keep")
    ex.add_argument("--warmup", type=int, default=32, help="validation examples in the warmup requests")
    ex.add_argument("--k", type=int, help="retrieval models: how many items the top-K exports return (100)")
    ex.add_argument("--gsu", choices=["auto", "exact", "pq"],
                    help="seminar / twin: serve the PQ GSU (auto, pq) or the exact one (auto)")
    ex.add_argument("--pq-subspaces", type=int, help="PQ sub-spaces (must divide the model's dim; 16)")
    ex.add_argument("--raw-text", action="store_true",
                    help="also sign serving_text / rank_text: text features sent as raw strings, encoded in the graph")
    ex.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="any export option the model declares (its `export_options`)")
    ex.add_argument("--format", choices=["saved_model", "tflite"], default="saved_model",
                    help="tflite: the on-device export (NAME.tflite/: float32 and int8-weight flatbuffers of built-in "
                         "ops, vocabularies, parity and latency report)")
    ex.add_argument("--no-scann", action="store_true",
                    help="retrieval models: skip NAME_topk_scann (it needs the ScaNN build of TF Serving)")
    ex.set_defaults(fn=_cmd_export)

    sub.add_parser("serve", help="TF Serving-compatible gRPC + REST model server (tfrec-zoo serve -h)")

    d = sub.add_parser("demo", help="build ml-latest-small from seeds/, train DIN, print metrics")
    d.add_argument("--out")
    d.add_argument("--runs-root", default="runs")
    d.set_defaults(fn=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the server parses its own flags (tfrec_zoo/serving/server.py)
        from tfrec_zoo.serving.server import main as serve_main

        return serve_main(argv[1:], prog="tfrec-zoo serve")
    args = build_parser().parse_args(argv)
    from tfrec_zoo.features import FeatureSpecError

    try:
        return args.fn(args)
    except (FeatureSpecError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130


def _interrupted(args) -> str:
    """What Ctrl-C left: a dataset write stops before its rename, so its --out is as it was."""
    if args.command != "data" or args.data_cmd not in ("write", "build"):
        return "interrupted"
    out = Path(args.out) if args.out else None
    if out is None:
        from tfrec_zoo.paths import default_data_dir

        out = default_data_dir() / args.name
    kept = " (the dataset already there is unchanged)" if (out / "manifest.json").exists() else ""
    return f"interrupted: nothing written to {out}{kept}"


if __name__ == "__main__":
    sys.exit(main())
