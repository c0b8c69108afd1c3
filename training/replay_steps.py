"""Replay step datasets: one example per replayed list, what the uplift models and the meta controller learn from
(`replay:` in an experiment or a stage; seed paper 4).

    stages:
      - name: uplift
        model: dnn                                   # a shared encoder, one head per mechanism: the T-learner
        join: {cloud_prior: {from: cloud}, device_score: {from: device}, refresh_prior: {...}}
        rows: {keep: {part: [2]}, splits: [train]}
        replay:
          scores: {cloud: cloud_prior, device: device_score, refresh: refresh_prior}
          keep: [device_history, session_history, session_clicks]   # what the device knows at the step
          outcome: ndcg                              # ndcg | hit | auc of the list (training/replay.py), k: 5
          seed: 0
        evaluation: {splits: [valid, test], uplift: {control: cloud}}

A list is a `keys.query` group (the step) of a dataset with a binary label; each `scores` column ranks it as one
mechanism would (joined predictions). Per list the replay measures the outcome O(t) of every mechanism
(`step_outcomes`), and the step example carries:
* the `keep` inputs, which must be the same on every row of a list (the list's context: its histories, counts);
  a feature that varies within a list (the candidate's id) is an error naming it;
* the user and step keys;
* `outcome_<mechanism>`: a regression label per mechanism, O(t), with the mask `served_<mechanism>`;
* `served_<mechanism>`: 1 for the one mechanism that served the step, drawn uniformly at random with `seed`
  (a dense column that is never a model input, `input: false`).
The random assignment is the randomized log the paper builds its uplift data from (D_0, D_1, D_2: each step seen
under one mechanism): a head trained under its mask learns E[O(t) | x] from its arm's steps only (a T-learner
with a shared encoder), and the uplift evaluation can score it as uplift models are scored (AUUC / Qini on the
observed arm). The replay also knows every mechanism's outcome on every step (the labels hold all three; the
masks hide two), which gives the evaluation the true uplift too.

Written into `data/replay/<parent>.replay-<fingerprint>/` (parent manifest + the `replay:` mapping), once, atomically;
the vocabularies and statistics are the parent's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfrec_zoo.data import DatasetDir, open_dataset
from tfrec_zoo.data.derived import with_columns, write_derived, write_split_records
from tfrec_zoo.features.spec import MultiHotFeature, SequenceFeature, parse_spec

from .replay import MECHANISMS, step_outcomes

REPLAY_KEYS = {"scores", "keep", "outcome", "k", "seed", "choice_from", "xlearner_from"}
OUTCOMES = ("ndcg", "hit", "auc")


def check_replay(cfg: Any, where: str, fail) -> None:
    """The shape of a `replay:` mapping (its columns are checked against the spec when the data is made)."""
    if not isinstance(cfg, dict):
        fail(where, f"expected {{scores: {{cloud: COLUMN, ...}}, keep: [...]}}, got {cfg!r}")
    unknown = sorted(set(cfg) - REPLAY_KEYS)
    if unknown:
        fail(f"{where}.{unknown[0]}", f"unknown key {unknown[0]!r}", f"use {', '.join(sorted(REPLAY_KEYS))}")
    scores = cfg.get("scores")
    if not isinstance(scores, dict) or len(scores) < 2 or not all(isinstance(v, str) for v in scores.values()):
        fail(f"{where}.scores", f"expected {{mechanism: score column}} for two or more of {', '.join(MECHANISMS)}, "
             f"got {scores!r}")
    bad = sorted(set(scores) - set(MECHANISMS))
    if bad:
        fail(f"{where}.scores.{bad[0]}", "not a mechanism", f"use {', '.join(MECHANISMS)}")
    keep = cfg.get("keep")
    if not isinstance(keep, list) or not keep or not all(isinstance(n, str) for n in keep):
        fail(f"{where}.keep", f"expected a non-empty list of the step's input features, got {keep!r}")
    if cfg.get("outcome", "ndcg") not in OUTCOMES:
        fail(f"{where}.outcome", f"{cfg.get('outcome')!r} is not one of {', '.join(OUTCOMES)}")
    for key in ("choice_from", "xlearner_from"):
        if key in cfg and not isinstance(cfg[key], str):
            fail(f"{where}.{key}", f"expected the name of an earlier stage (the uplift model), got {cfg[key]!r}")
    if "choice_from" in cfg and "xlearner_from" in cfg:
        fail(where, "both choice_from and xlearner_from are set",
             "the controller's lists take choice_from, the X-learner's xlearner_from")
    for key in ("k", "seed"):
        v = cfg.get(key, 5 if key == "k" else 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "k" else 0):
            fail(f"{where}.{key}", f"expected an integer >= {1 if key == 'k' else 0}, got {v!r}")


def step_spec_dict(parent_spec, cfg: dict) -> dict:
    """The step dataset's spec: the parent's user and step keys and `keep` inputs, `served_*` masks and
    `outcome_*` labels (one per mechanism of `scores`)."""
    spec, mechs = parent_spec, list(cfg["scores"])
    user, step = spec.keys.get("user"), spec.keys.get("query")
    names = [n for n in dict.fromkeys([user, step, *cfg["keep"]])]
    raw = spec.to_dict()
    by_name = {d["name"]: d for d in raw["features"]}
    side = [d for d, f in zip(raw["features"], spec.features) if f.side_of in names]
    features = [by_name[n] for n in names] + side
    _own_dropped_tables(spec, features)
    for m in mechs:
        features.append({"name": f"served_{m}", "kind": "dense", "normalization": "none", "input": False,
                         "doc": f"1 when the randomized replay served this step with the {m} mechanism"})
    for m in mechs:
        features.append({"name": f"outcome_{m}", "kind": "label", "task": m, "type": "regression",
                         "mask": f"served_{m}",
                         "doc": f"the {m} mechanism's {cfg.get('outcome', 'ndcg')} of the list (counts where served)"})
    return {"name": f"{spec.name}-steps", "description": f"one example per list of {spec.name} (training/steps.py)",
            "keys": {"user": user, "query": step}, "features": features}


def choice_spec_dict(step_spec, mechs: list[str]) -> dict:
    """The controller's spec: the step spec with its outcome labels turned into `input: false` columns (the
    evaluation reads them) and one multiclass label `choice` over `mechs` (MECHANISMS order: refresh, the
    budgeted mechanism, is the last class when present)."""
    raw = step_spec.to_dict()
    features = []
    for d in raw["features"]:
        if d["kind"] == "label":
            d = {"name": d["name"], "kind": "dense", "normalization": "none", "input": False,
                 "doc": d.get("doc", "")}
        features.append(d)
    features.append({"name": "choice", "kind": "label", "task": "choice", "type": "multiclass",
                     "num_classes": len(mechs),
                     "doc": "the counterfactual label: the mechanism of the largest estimated outcome (classes: "
                            + ", ".join(mechs) + "; ties to the cheaper)"})
    return {**raw, "name": f"{step_spec.name}-choice", "features": features}


def _own_dropped_tables(spec, features: list[dict]) -> None:
    """A kept history field that shares the table of a feature left out (the candidate's `item_id`) takes the
    table over in place: the owner's vocabulary settings and `embedding_group: <table>`, so the table keeps its
    name and the parent's vocabulary file (copied with the artifacts) still serves it."""
    kept = {d["name"] for d in features} | {fd["name"] for d in features for fd in d.get("fields", [])}
    new_owner: dict[str, str] = {}
    for d in features:
        for fd in [d, *d.get("fields", [])]:
            target = fd.get("shares_embedding_with")
            if not target or target in kept:
                continue
            table = spec.table_of(fd["name"])
            if table in new_owner:
                fd["shares_embedding_with"] = new_owner[table]
                continue
            owner = spec.table_config(table)
            fd.pop("shares_embedding_with")
            fd["embedding_group"] = table
            for key in ("dtype", "embedding_dim", "hash_buckets"):
                if getattr(owner, key, None):
                    fd[key] = getattr(owner, key)
            if owner.vocab is not None and not owner.hash_buckets:
                fd["vocab"] = {k: v for k, v in dataclasses.asdict(owner.vocab).items() if v is not None}
            new_owner[table] = fd["name"]


def _record_keys(f) -> list[str]:
    if isinstance(f, SequenceFeature):
        return [sf.name for sf in f.fields]
    if isinstance(f, MultiHotFeature):
        return [f.name] + ([f.weights] if f.weights else [])
    return [f.name]


def _scalar(feature) -> Any:
    for kind in ("int64_list", "float_list", "bytes_list"):
        values = getattr(feature, kind).value
        if len(values):
            return values[0]
    return None


def replay_dir(parent: DatasetDir, cfg: dict, out_root: Path) -> Path:
    key = {"parent": hashlib.sha256((parent.path / "manifest.json").read_bytes()).hexdigest(), "replay": cfg}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(out_root) / f"{parent.path.name.split('.')[0]}.replay-{digest}"


def replay_steps(parent: DatasetDir, cfg: dict, out_root: str | Path, *, where: str = "replay",
                 log: Callable[[str], Any] = print) -> DatasetDir:
    """The step dataset of `parent` (module docstring), written on first use; with `choice_from` (a resolved
    run directory), the controller's dataset made from it (`choice_dataset`)."""
    for key, make in (("choice_from", choice_dataset), ("xlearner_from", xlearner_dataset)):
        if cfg.get(key):
            steps = replay_steps(parent, {k: v for k, v in cfg.items() if k != key}, out_root, where=where, log=log)
            return make(steps, cfg[key], out_root, where=f"{where}.{key}", log=log)
    spec = parent.spec
    columns = {f.name: f for f in spec.row_features}
    for key in ("user", "query"):
        if spec.keys.get(key) not in columns:
            raise ValueError(f"{where}: {spec.source} has no `keys.{key}` column (a list is a keys.query group of "
                             "one user)")
    binary = [lab for lab in spec.labels if lab.type == "binary"]
    if len(binary) != 1:
        raise ValueError(f"{where}: {spec.source} needs exactly one binary label (the clicks the lists are scored "
                         f"on), it has {[lab.name for lab in binary]}")
    for m, col in cfg["scores"].items():
        if col not in columns or columns[col].kind != "dense":
            raise ValueError(f"{where}.scores.{m}: {col!r} is not a dense column of {spec.source} (join the "
                             "mechanism's predictions into it first: `join:`)")
    inputs = {f.name for f in spec.inputs}
    for n in cfg["keep"]:
        if n not in inputs:
            raise ValueError(f"{where}.keep: {n!r} is not an input feature of {spec.source}")
        if n in cfg["scores"].values():
            raise ValueError(f"{where}.keep: {n!r} is a mechanism's score; the step's inputs are what the device "
                             "knows before any mechanism ranks the list")
    out = replay_dir(parent, cfg, Path(out_root))
    if (out / "manifest.json").exists():
        return open_dataset(out)
    step_spec = parse_spec(step_spec_dict(spec, cfg), source=f"{spec.source} ({where})")
    log(f"writing one example per list of {parent.path} into {out}")
    counts: dict[str, dict] = {}
    splits = list(parent.manifest["splits"])

    def write_split(split: str, root: Path) -> dict:
        entry, counts[split] = _write_split(parent, split, cfg, binary[0].name, root,
                                            seed=(int(cfg.get("seed", 0)), splits.index(split)), where=where)
        return entry

    # `counts` fills while the splits are written, before the manifest is
    data = write_derived(parent, out, step_spec, {"replay": {"parent": str(parent.path), "config": cfg,
                                                             "outcomes": counts}}, write_split)
    for split, c in counts.items():
        log(f"  {split}: {c['steps']:,} lists; mean outcome " + ", ".join(f"{m} {v:.4f}" for m, v in c["mean"].items()))
    return data


def _labelled_by(steps: DatasetDir, run: str | Path, kind: str, out_root: str | Path, where: str):
    """(out dir, the run's model or None when `out` is written already, the mechanisms) of a dataset made from
    `steps` with the predictions of the run's model (fingerprint: the steps' manifest and the model's weights)."""
    from .join import _model_identity
    from .runs import load_run

    run = Path(run)
    if not (run / "model").exists():
        raise FileNotFoundError(f"{where}: {run} holds no trained model (its stage has not finished?)")
    mechs = [m for m in MECHANISMS if f"outcome_{m}" in {lab.name for lab in steps.spec.labels}]
    key = {"steps": hashlib.sha256((steps.path / "manifest.json").read_bytes()).hexdigest(),
           "model": _model_identity(run), "kind": kind}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(out_root) / f"{steps.path.name}.{kind}-{digest}"
    if (out / "manifest.json").exists():
        return out, None, mechs
    return out, load_run(run, log=lambda *_: None)[2], mechs


def choice_dataset(steps: DatasetDir, run: str | Path, out_root: str | Path, *, where: str = "choice_from",
                   log: Callable[[str], Any] = print) -> DatasetDir:
    """`steps` with the counterfactual label `choice` of every example: the run's model (an uplift model trained
    on `steps`: a T-learner's task per mechanism, or an X-learner's effects) estimates each mechanism's outcome or
    uplift, and the label is the mechanism of the largest estimate, ties to the cheaper (`counterfactual_label`).
    The outcome labels become `input: false` columns. Written once per steps dataset and model."""
    from .predict import predictions

    out, model, mechs = _labelled_by(steps, run, "choice", out_root, where)
    if model is None:
        return open_dataset(out)
    estimates = _estimator(model, mechs, where, run)
    spec = parse_spec(choice_spec_dict(steps.spec, mechs), source=f"{steps.spec.source} (choice)")
    log(f"labelling {steps.path} with the choices of {run}'s estimates into {out}")
    shares = {}

    def write_split(split: str, root: Path) -> dict:
        choice = np.argmax(estimates(predictions(model, steps, split)), 1)   # first of equal maxima: the cheaper
        shares[split] = {m: float(np.mean(choice == i)) for i, m in enumerate(mechs)}
        return with_columns(steps, split, {"choice": choice}, root)

    data = write_derived(steps, out, spec, {"choice": {"from": str(run), "classes": mechs, "shares": shares}},
                         write_split)
    for split, sh in shares.items():
        log(f"  {split}: choices " + ", ".join(f"{m} {v:.1%}" for m, v in sh.items()))
    return data


def _estimator(model, mechs: list[str], where: str, run):
    """frame of the model's predictions -> [N, mechanisms] scores whose argmax is the counterfactual label: a
    T-learner's predicted outcomes (a task per mechanism), or an X-learner's uplift over the first mechanism (0 for
    it, (tau_0 + tau_1) / 2 for each other: tasks effect_<m>_treated / _control)."""
    tasks = set(model.task_names)
    if set(mechs) <= tasks:
        return lambda frame: np.stack([np.asarray(frame[m], float) for m in mechs], 1)
    effects = [f"effect_{m}_{side}" for m in mechs[1:] for side in ("treated", "control")]
    if set(effects) <= tasks:
        return lambda frame: np.stack([np.zeros(len(frame[effects[0]]))] + [
            0.5 * (np.asarray(frame[f"effect_{m}_treated"], float) + np.asarray(frame[f"effect_{m}_control"], float))
            for m in mechs[1:]], 1)
    raise ValueError(f"{where}: {run}'s model has neither a task per mechanism ({mechs}) nor an X-learner's "
                     f"effect_* tasks (its tasks: {model.task_names}); name the uplift stage")


def xlearner_spec_dict(step_spec, mechs: list[str]) -> dict:
    """The X-learner's spec: outcomes as `input: false` columns, and per treatment m (each mechanism after the
    first, the control) the labels effect_<m>_treated (masked to the lists m served) and effect_<m>_control
    (masked to the lists the control served)."""
    raw = choice_spec_dict(step_spec, mechs)
    features = [d for d in raw["features"] if d["name"] != "choice"]
    for m in mechs[1:]:
        features.append({"name": f"effect_{m}_treated", "kind": "label", "task": f"effect_{m}_treated",
                         "type": "regression", "mask": f"served_{m}",
                         "doc": f"imputed effect outcome_{m} - mu_{mechs[0]}(x) where {m} served"})
        features.append({"name": f"effect_{m}_control", "kind": "label", "task": f"effect_{m}_control",
                         "type": "regression", "mask": f"served_{mechs[0]}",
                         "doc": f"imputed effect mu_{m}(x) - outcome_{mechs[0]} where {mechs[0]} served"})
    return {**raw, "name": f"{step_spec.name}-xlearner", "features": features}


def xlearner_dataset(steps: DatasetDir, run: str | Path, out_root: str | Path, *, where: str = "xlearner_from",
                     log: Callable[[str], Any] = print) -> DatasetDir:
    """`steps` with the X-learner's second-stage targets (`replay.x_learner_targets`) from the run's T-learner
    (a task per mechanism, trained on `steps`): the first mechanism is the control. Written once per steps dataset
    and model."""
    from .predict import predictions
    from .replay import x_learner_targets

    out, model, mechs = _labelled_by(steps, run, "xlearner", out_root, where)
    if model is None:
        return open_dataset(out)
    if not set(mechs) <= set(model.task_names):
        raise ValueError(f"{where}: {run}'s model is no T-learner of these lists (tasks {model.task_names}, "
                         f"mechanisms {mechs})")
    spec = parse_spec(xlearner_spec_dict(steps.spec, mechs), source=f"{steps.spec.source} (xlearner)")
    log(f"imputing the X-learner's effects on {steps.path} from {run} into {out}")

    def write_split(split: str, root: Path) -> dict:
        frame = predictions(model, steps, split)
        mu = np.stack([np.asarray(frame[m], float) for m in mechs], 1)
        outcome, served = _outcomes_and_arms(steps, split, mechs)
        observed = outcome[np.arange(len(served)), served]
        columns = {}
        for i, m in enumerate(mechs[1:], start=1):
            t = x_learner_targets(observed, served, mu, treatment=i, control=0)
            columns[f"effect_{m}_treated"], columns[f"effect_{m}_control"] = t["d_treated"], t["d_control"]
        return with_columns(steps, split, columns, root)

    return write_derived(steps, out, spec, {"xlearner": {"from": str(run), "control": mechs[0]}}, write_split)


def _outcomes_and_arms(steps: DatasetDir, split: str, mechs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """([N, mechanisms] outcomes, [N] index of the mechanism that served) of a steps split, in file order."""
    outs, arms = [], []
    for feats, labels, weights in steps.dataset(split, 4096, features=[f"served_{m}" for m in mechs]):
        outs.append(np.stack([labels[m].numpy() for m in mechs], 1))
        arms.append(np.argmax(np.stack([weights[m].numpy() for m in mechs], 1), 1))
    return np.concatenate(outs), np.concatenate(arms)


def _write_split(parent: DatasetDir, split: str, cfg: dict, label: str, root: Path, *, seed, where: str):
    """(manifest entry, {steps, mean outcome per mechanism}) of one split."""
    import pandas as pd
    import tensorflow as tf

    spec = parent.spec
    user, step = spec.keys["user"], spec.keys["query"]
    keys = [k for n in dict.fromkeys([user, step, *cfg["keep"]]) for k in _record_keys(spec[n])]
    scores = cfg["scores"]
    first: dict[Any, tf.train.Example] = {}
    rows: dict[str, list] = {"step_id": [], "user_id": [], "click": [], **{c: [] for c in scores.values()}}
    compression = parent.manifest.get("compression", "GZIP")
    ds = tf.data.TFRecordDataset([str(f) for f in parent.files(split)], compression_type=compression).batch(8192)
    for batch in ds:
        for raw in batch.numpy():
            ex = tf.train.Example.FromString(raw)
            feat = ex.features.feature
            s = _scalar(feat[step])
            if s not in first:
                context = tf.train.Example()
                for k in keys:
                    if k in feat:
                        context.features.feature[k].CopyFrom(feat[k])
                first[s] = context
            else:
                ctx = first[s].features.feature
                for k in keys:
                    if (k in feat) != (k in ctx) or (k in feat and feat[k] != ctx[k]):
                        raise ValueError(f"{where}.keep: {k!r} differs between rows of list {step}={s!r} "
                                         f"({parent.path} {split}); keep only what is the same for the whole list "
                                         "(its histories and counts, not the candidate's features)")
            rows["step_id"].append(s)
            rows["user_id"].append(_scalar(feat[user]))
            rows["click"].append(_scalar(feat[label]))
            for c in dict.fromkeys(scores.values()):       # two mechanisms may be scored by one column
                rows[c].append(_scalar(feat[c]))
    if not first:
        return {"rows": 0, "shards": []}, {"steps": 0, "mean": {}}
    frame = pd.DataFrame(rows)
    outcomes = step_outcomes(frame, scores, k=int(cfg.get("k", 5)), outcome=cfg.get("outcome", "ndcg"))
    mechs = list(scores)
    served = np.random.default_rng(list(seed)).integers(0, len(mechs), len(outcomes))
    by_step = dict(zip(outcomes["step_id"].tolist(), range(len(outcomes))))

    def chunks(size=4096):
        order = list(first)
        for lo in range(0, len(order), size):
            out = []
            for s in order[lo:lo + size]:
                ex, i = first[s], by_step[s]
                for j, m in enumerate(mechs):
                    o = float(outcomes[f"O_{m}"].iat[i])
                    # a list with no click (or, for auc, one class only) has no outcome: 0, as the replay scores it
                    ex.features.feature[f"outcome_{m}"].float_list.value[:] = [o if np.isfinite(o) else 0.0]
                    ex.features.feature[f"served_{m}"].float_list.value[:] = [float(served[i] == j)]
                out.append(ex.SerializeToString())
            yield b"".join(out), np.concatenate([[0], np.cumsum([len(r) for r in out])]).tolist()

    mean = {m: float(np.nanmean(outcomes[f"O_{m}"])) for m in mechs}
    entry = write_split_records(root, split, compression, chunks, lambda: len(first))
    return entry, {"steps": len(first), "mean": mean}
