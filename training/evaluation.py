"""Evaluation after training: the protocol a model declares, run on the experiment's splits.

Protocols (`ZooModel.evaluation_protocol(spec)`; `register_protocol` adds one):
* pointwise: one pass over a split, then exact metrics per task (and per domain). Binary tasks: AUC, GAUC (grouped
  by the spec's `keys.user`), logloss; regression: RMSE, MAE; multiclass: accuracy, cross-entropy. Label masks
  (e.g. CVR counted only where click = 1) restrict a task's rows. When the spec has a `domain` feature, every
  metric is also reported per domain value.
* sampled: 1 positive + the row's sampled negatives (training/ranking.py).
* retrieval: full-corpus Recall / HitRate / NDCG@K beside most-popular (training/retrieval.py).
Pointwise with `evaluation.uplift: {control: TASK, treatments: [TASK, ...]}` also scores a model whose tasks are
the outcomes of mechanisms (a T-learner's heads, one per arm, each label masked to the examples its arm served:
training/steps.py): `uplift_metrics`.
Each writes metrics.json and summary.md into the run directory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np

from tfrec_zoo import metrics as M
from tfrec_zoo.features import FeatureSpec


def collect(model, dataset, spec: FeatureSpec, max_batches: int | None = None,
            group_by: str | None = None, extra: Collection[str] = ()) -> dict[str, Any]:
    """Predictions, labels, weights and grouping columns (and `extra` columns) of a whole split, as numpy arrays."""
    import tensorflow as tf

    domains = [f.name for f in spec.of_kind("domain")]
    keep = [c for c in [group_by or spec.keys.get("user"), *domains, *extra] if c]
    out: dict[str, list] = {}

    for i, batch in enumerate(dataset):
        if max_batches is not None and i >= max_batches:
            break
        feats, labels = batch[0], batch[1]
        weights = batch[2] if len(batch) > 2 else {k: tf.ones_like(v) for k, v in labels.items()}
        inputs = {k: feats[k] for k in model.input_names}
        preds = model.predict_on_batch(inputs)  # Keras' own cached predict function: one trace per shape
        for task in labels:
            out.setdefault(f"pred/{task}", []).append(np.asarray(preds[task]))
            out.setdefault(f"label/{task}", []).append(labels[task].numpy())
            out.setdefault(f"weight/{task}", []).append(weights[task].numpy())
        for col in keep:
            if col in feats:
                out.setdefault(f"key/{col}", []).append(feats[col].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _binary(labels, probs, groups) -> dict[str, float]:
    res = {"auc": M.auc(labels, probs), "logloss": M.logloss(labels, probs), "count": int(len(labels)),
           "positive_rate": float(np.mean(labels)) if len(labels) else float("nan")}
    if groups is not None:
        g = M.gauc(labels, probs, groups)
        res.update({"gauc": g.value, "gauc_groups": g.n_groups_used, "gauc_groups_skipped": g.n_groups_skipped})
    return res


def task_metrics(spec: FeatureSpec, data: dict[str, np.ndarray], rows: np.ndarray | None = None,
                 tasks: Collection[str] | None = None, group_by: str | None = None) -> dict[str, dict]:
    """Metrics per task; GAUC groups by `group_by` (default the spec's user key)."""
    group_by = group_by or spec.keys.get("user")
    groups_all = data.get(f"key/{group_by}") if group_by else None
    out = {}
    for lab in spec.labels:
        if tasks is not None and lab.task not in tasks:
            continue
        y, p, w = data[f"label/{lab.task}"], data[f"pred/{lab.task}"], data[f"weight/{lab.task}"]
        sel = w > 0
        if rows is not None:
            sel &= rows
        y, p = y[sel], p[sel]
        if not len(y):
            out[lab.task] = {"count": 0}
            continue
        if lab.type == "binary":
            groups = groups_all[sel] if groups_all is not None else None
            out[lab.task] = _binary(y, np.clip(p, 0.0, 1.0), groups)
        elif lab.type == "regression":
            out[lab.task] = {"rmse": float(np.sqrt(np.mean((p - y) ** 2))), "mae": float(np.mean(np.abs(p - y))),
                             "count": int(len(y))}
        else:
            yi = y.astype(int)
            prob = np.clip(p[np.arange(len(yi)), yi], 1e-7, 1.0)
            out[lab.task] = {"accuracy": float(np.mean(np.argmax(p, axis=1) == yi)),
                             "cross_entropy": float(-np.mean(np.log(prob))), "count": int(len(y))}
    return out


def evaluate_split(model, dataset, spec: FeatureSpec, max_batches: int | None = None,
                   tasks: Collection[str] | None = None, group_by: str | None = None,
                   uplift: dict | None = None, policy: dict | None = None) -> dict[str, Any]:
    """{'overall': {task: metrics}, 'by_domain': {domain: {value: {task: metrics}}}} for `tasks` (default: all);
    GAUC groups rows by `group_by` (default the spec's user key: a session step's list in a replay); with
    `uplift` ({control, treatments}) also 'uplift': `uplift_metrics`; with `policy` ({task, outcomes}) also
    'policy': `policy_metrics`."""
    extra = [*(policy or {}).get("outcomes", ()), *uplift_columns(uplift)]
    data = collect(model, dataset, spec, max_batches, group_by, extra=extra)
    result: dict[str, Any] = {"overall": task_metrics(spec, data, tasks=tasks, group_by=group_by)}
    if uplift:
        result["uplift"] = uplift_metrics(data, uplift["control"], uplift["treatments"], uplift.get("xlearner", False))
    if policy:
        result["policy"] = policy_metrics(data[f"pred/{policy['task']}"],
                                          np.stack([data[f"key/{c}"] for c in policy["outcomes"]], 1),
                                          policy.get("names") or policy["outcomes"])
    for f in spec.of_kind("domain"):
        values = data.get(f"key/{f.name}")
        if values is None:
            continue
        per_value = {(v.decode() if isinstance(v, bytes) else str(v)):
                     task_metrics(spec, data, values == v, tasks, group_by) for v in np.unique(values)}
        result.setdefault("by_domain", {})[f.name] = per_value
        result.setdefault("domain_mean", {})[f.name] = domain_mean(per_value)
    return result


def uplift_metrics(data: dict[str, np.ndarray], control: str, treatments: Collection[str],
                   xlearner: bool = False) -> dict[str, Any]:
    """Uplift of each treatment over the `control` arm, from `collect`'s arrays.

    T-learner (a task per arm): predictions `pred/<arm>` (the expected outcome under that arm), labels
    `label/<arm>` (the outcome under that arm) and weights `weight/<arm>` (1 where that arm served the example);
    tau_hat = pred_t - pred_control. X-learner (`xlearner`: tasks `effect_<t>_treated` / `effect_<t>_control`,
    training/replay_steps.py): tau_hat = (tau_0 + tau_1) / 2 (the propensity of t among t and the control is 1/2
    under the replay's uniform assignment), the outcomes from the columns `key/outcome_<arm>` and who was served
    from the two heads' weights. `uplift_report` then scores them."""
    arms = [control, *treatments]
    if xlearner:
        tau_hat, served = {}, {}
        for t in treatments:
            for side in ("treated", "control"):
                if f"pred/effect_{t}_{side}" not in data:
                    raise ValueError(f"evaluation.uplift: the model has no task effect_{t}_{side} (an X-learner "
                                     "has two per treatment: `replay: {xlearner_from: STAGE}`)")
            tau_hat[t] = 0.5 * (data[f"pred/effect_{t}_treated"] + data[f"pred/effect_{t}_control"])
            served[t] = data[f"weight/effect_{t}_treated"] > 0
            served[control] = data[f"weight/effect_{t}_control"] > 0
        outcome = {a: data[f"key/outcome_{a}"].astype(np.float64) for a in arms}
        return uplift_report(tau_hat, served, outcome, control)
    for t in arms:
        if f"pred/{t}" not in data:
            raise ValueError(f"evaluation.uplift: {t!r} is not a task of the model (its tasks: "
                             f"{sorted(k[5:] for k in data if k.startswith('pred/'))})")
    pred = {t: data[f"pred/{t}"].astype(np.float64) for t in arms}
    return uplift_report({t: pred[t] - pred[control] for t in treatments}, {t: data[f"weight/{t}"] > 0 for t in arms},
                         {t: data[f"label/{t}"].astype(np.float64) for t in arms}, control)


def uplift_report(tau_hat: dict[str, np.ndarray], served: dict[str, np.ndarray], outcome: dict[str, np.ndarray],
                  control: str) -> dict[str, Any]:
    """Per treatment t (`tau_hat[t]` its estimated uplift over `control`, `served[arm]` where each arm served,
    `outcome[arm]` each arm's outcome on every example):
    * auuc / qini (tfrec_zoo.metrics.uplift) on the examples served by t or the control, the served arm's outcome
      as the outcome: how uplift models are scored on a randomized log;
    * where every arm's outcome is known for every example (a replay), the true uplift tau = outcome_t -
      outcome_control: its mean (the ATE), the mean of tau_hat, and their Pearson correlation.
    'policy': the mean outcome of serving every example with one arm, with the arm of the largest estimated uplift
    (the counterfactual label, ties to the control), and with the best arm per example (the oracle)."""
    treatments = list(tau_hat)
    arms = [control, *treatments]
    out: dict[str, Any] = {}
    for t in treatments:
        rows = served[t] | served[control]
        treated = served[t][rows]
        entry: dict[str, Any] = {"treated": int(treated.sum()), "control": int((~treated).sum())}
        if entry["treated"] and entry["control"]:
            observed = np.where(treated, outcome[t][rows], outcome[control][rows])
            entry.update(auuc=M.auuc(treated.astype(int), observed, tau_hat[t][rows]),
                         qini=M.qini(treated.astype(int), observed, tau_hat[t][rows]))
        tau = outcome[t] - outcome[control]
        entry.update(ate_true=float(tau.mean()), ate_pred=float(tau_hat[t].mean()),
                     corr_true=float(np.corrcoef(tau_hat[t], tau)[0, 1]) if tau.std() > 0 and tau_hat[t].std() > 0
                     else float("nan"))
        out[t] = entry
    chosen = np.argmax(np.stack([np.zeros_like(outcome[control])] + [tau_hat[t] for t in treatments], 1), 1)
    outcomes = np.stack([outcome[t] for t in arms], 1)
    policy = {f"always_{t}": float(outcome[t].mean()) for t in arms}
    policy["predicted_best"] = float(outcomes[np.arange(len(chosen)), chosen].mean())
    policy["oracle"] = float(outcomes.max(axis=1).mean())
    policy["predicted_best_share"] = {t: float(np.mean(chosen == i)) for i, t in enumerate(arms)}
    out["policy"] = policy
    return out


def policy_metrics(probs: np.ndarray, outcomes: np.ndarray, names: list[str]) -> dict[str, Any]:
    """A chooser's value: `probs` [N, C] (a multiclass task over arms), `outcomes` [N, C] every arm's outcome on
    every example (a replay knows them). 'chosen': the mean outcome of each example's most probable arm, with the
    arms' shares (the last arm's share is the refresh rate of a device-cloud controller); 'always_<arm>': one arm
    for every example; 'random_mix': the expected outcome of drawing arms at random with the chooser's shares
    (RMixRec); 'oracle': the best arm of every example."""
    probs, outcomes = np.asarray(probs, float), np.asarray(outcomes, float)
    choice = np.argmax(probs, 1)
    shares = np.bincount(choice, minlength=outcomes.shape[1]) / max(len(choice), 1)
    means = outcomes.mean(0)
    out: dict[str, Any] = {"chosen": float(outcomes[np.arange(len(choice)), choice].mean()),
                           "random_mix": float(shares @ means), "oracle": float(outcomes.max(1).mean())}
    out.update({f"always_{n}": float(m) for n, m in zip(names, means)})
    out["shares"] = {n: float(v) for n, v in zip(names, shares)}
    out["last_share"] = float(shares[-1])
    return out


def uplift_columns(uplift: dict | None) -> list[str]:
    """The outcome columns an X-learner's uplift evaluation reads (a T-learner's outcomes are its labels)."""
    if not uplift or not uplift.get("xlearner"):
        return []
    return [f"outcome_{a}" for a in [uplift["control"], *uplift["treatments"]]]


def check_policy(exp, spec: FeatureSpec) -> dict | None:
    """`evaluation.policy: {task, outcomes: [COLUMN per class]}` checked against `spec` (before training)."""
    from .experiment import ExperimentError

    pol = (exp.evaluation or {}).get("policy")
    if not pol:
        return None
    tasks = {lab.task: lab for lab in spec.labels if lab.type == "multiclass"}
    if pol.get("task") not in tasks:
        raise ExperimentError(exp.source, "evaluation.policy.task", f"{pol.get('task')!r} is not a multiclass task "
                              f"of {spec.source} (those: {', '.join(tasks) or 'none'})")
    columns = {f.name for f in spec.row_features if f.kind == "dense"}
    outs = pol.get("outcomes") or []
    if len(outs) != tasks[pol["task"]].num_classes or any(c not in columns for c in outs):
        raise ExperimentError(exp.source, "evaluation.policy.outcomes", f"expected {tasks[pol['task']].num_classes} "
                              f"dense columns of {spec.source} (one per class, in class order), got {outs!r}")
    names = [c.removeprefix("outcome_") for c in outs]
    return {"task": pol["task"], "outcomes": list(outs), "names": names}


def check_uplift(exp, spec: FeatureSpec) -> dict | None:
    """`evaluation.uplift` with its treatments filled in (default: every other task), each task a label of
    `spec` (checked before training)."""
    from .experiment import ExperimentError

    up = (exp.evaluation or {}).get("uplift")
    if not up:
        return None
    effects = [lab.task for lab in spec.labels if lab.task.startswith("effect_") and lab.task.endswith("_treated")]
    if effects:                     # an X-learner's dataset: the arms are its outcome columns
        treatments = up.get("treatments") or [t[len("effect_"):-len("_treated")] for t in effects]
        columns = {f.name for f in spec.row_features}
        for t in [up["control"], *treatments]:
            if f"outcome_{t}" not in columns:
                raise ExperimentError(exp.source, "evaluation.uplift", f"{t!r}: {spec.source} has no column "
                                      f"outcome_{t}")
        return {"control": up["control"], "treatments": treatments, "xlearner": True}
    tasks = [lab.task for lab in spec.labels if lab.type in ("binary", "regression")]
    treatments = up.get("treatments") or [t for t in tasks if t != up["control"]]
    for key, names in (("control", [up["control"]]), ("treatments", treatments)):
        for t in names:
            if t not in tasks:
                raise ExperimentError(exp.source, f"evaluation.uplift.{key}", f"{t!r} is not a binary or regression "
                                      f"task of {spec.source} (its tasks: {', '.join(tasks)})")
    if not treatments:
        raise ExperimentError(exp.source, "evaluation.uplift.treatments", "no task is left to compare with the "
                              "control", "the spec needs a task per arm")
    return {"control": up["control"], "treatments": treatments}


DOMAIN_MEAN_METRICS = ("auc", "gauc", "logloss", "rmse", "accuracy")


def domain_mean(per_value: dict[str, dict]) -> dict[str, dict]:
    """{task: {metric: unweighted mean over the domains, "domains": how many}}: every domain counts once however
    many rows it has (a small domain weighs as much as a big one). A domain whose metric is undefined (no rows, one
    class only) is left out of that metric's mean, and `domains` says how many entered."""
    out: dict[str, dict] = {}
    tasks = {t for metrics in per_value.values() for t in metrics}
    for task in sorted(tasks):
        entry: dict[str, Any] = {}
        for name in DOMAIN_MEAN_METRICS:
            vals = [m[task][name] for m in per_value.values() if task in m and isinstance(m[task].get(name), float)
                    and np.isfinite(m[task][name])]
            if vals:
                entry[name] = float(np.mean(vals))
                entry[f"{name}_domains"] = len(vals)
        if entry:
            out[task] = entry
    return out


def format_table(results: dict[str, dict]) -> str:
    """A markdown table: split x task x metric; then, for a spec with a domain feature, split x domain x task with
    AUC / GAUC (or the task type's metrics) per domain and their unweighted mean."""
    lines = ["| split | task | metric | value |", "|---|---|---|---|"]
    for split, res in results.items():
        for task, metrics in res["overall"].items():
            for name, value in metrics.items():
                if name == "count" or isinstance(value, (dict, list)):
                    continue
                lines.append(f"| {split} | {task} | {name} | {value:.4f} |" if isinstance(value, float)
                             else f"| {split} | {task} | {name} | {value} |")
    domain_lines = _domain_table(results)
    uplift_lines = _uplift_table(results)
    return "\n".join(lines + ([""] + domain_lines if domain_lines else []) + ([""] + uplift_lines if uplift_lines
                                                                              else []))


def _uplift_table(results: dict[str, dict]) -> list[str]:
    rows = []
    for split, res in results.items():
        pol = res.get("policy")
        if pol:
            cells = ", ".join(f"{k} {v:.4f}" for k, v in pol.items() if isinstance(v, float))
            shares = ", ".join(f"{k} {v:.1%}" for k, v in pol["shares"].items())
            rows.append(f"| {split} | chosen arm (mean outcome; shares {shares}) | {cells} |")
        up = res.get("uplift") or {}
        for arm, m in up.items():
            if arm == "policy":
                cells = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
                rows.append(f"| {split} | policy (mean outcome) | {cells} |")
            else:
                cells = ", ".join(f"{k} {m[k]:.4f}" for k in ("auuc", "qini", "ate_true", "ate_pred", "corr_true")
                                  if isinstance(m.get(k), float))
                rows.append(f"| {split} | {arm} vs control ({m['treated']} / {m['control']}) | {cells} |")
    return ["| split | uplift / policy | metrics |", "|---|---|---|", *rows] if rows else []


def _domain_table(results: dict[str, dict]) -> list[str]:
    rows = []
    for split, res in results.items():
        for feature, per_value in (res.get("by_domain") or {}).items():
            means = (res.get("domain_mean") or {}).get(feature, {})
            for value, tasks in [*per_value.items(), ("mean over domains", means)]:
                for task, m in tasks.items():
                    shown = [n for n in DOMAIN_MEAN_METRICS if n in m][:2]
                    cells = ", ".join(f"{n} {m[n]:.4f}" for n in shown) or "-"
                    count = m.get("count", f"{m.get(shown[0] + '_domains', 0)} domains" if shown else "")
                    rows.append(f"| {split} | {feature}={value} | {task} | {count} | {cells} |")
    return ["| split | domain | task | rows | metrics |", "|---|---|---|---|---|", *rows] if rows else []


def trained_tasks(model) -> list[str]:
    """Tasks with a non-zero loss weight: a head trained with weight 0 has nothing to report."""
    return [t for t in model.task_names if model.loss_weights.get(t)]


PROTOCOLS: dict[str, Callable] = {}


def register_protocol(name: str):
    """Register `fn(exp, model, data) -> (results, description)` as evaluation protocol `name`."""
    def deco(fn):
        PROTOCOLS[name] = fn
        return fn
    return deco


def evaluate_run_model(exp, model, data, run_dir: Path) -> dict[str, Any]:
    """Evaluate a trained model by the protocol it declares; writes metrics.json and summary.md."""
    protocol = model.evaluation_protocol(data.spec)
    if protocol not in PROTOCOLS:
        raise ValueError(f"{exp.model} declares evaluation protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    results, what = PROTOCOLS[protocol](exp, model, data)
    write_metrics(exp, model, results, what, run_dir)
    return results


def write_metrics(exp, model, results: dict, what: str, run_dir: Path) -> None:
    ignored = getattr(model, "ignored_features", [])
    notes = f"\n\nignored features of the spec (not model inputs): {', '.join(ignored)}" if ignored else ""
    _atomic_write(run_dir / "metrics.json", json.dumps(results, indent=1, default=float) + "\n")
    _atomic_write(run_dir / "summary.md", f"# {exp.name}\n\nmodel `{exp.model}` on `{exp.dataset}`{what}{notes}\n\n"
                  + format_table(results) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check_group_by(exp, spec: FeatureSpec) -> str | None:
    """The column GAUC groups by (`evaluation.group_by`, default the user key), checked to be one of `spec`'s
    (the trainer calls this before fitting, so a typo does not wait for the end of training)."""
    from .experiment import ExperimentError

    group_by = (exp.evaluation or {}).get("group_by") or spec.keys.get("user")
    if group_by and group_by not in {f.name for f in spec.row_features}:
        raise ExperimentError(exp.source, "evaluation.group_by", f"{group_by!r} is not a column of {spec.source} "
                              "(GAUC groups rows by it)", f"use one of its id columns, e.g. {spec.keys.get('user')!r}")
    return group_by


@register_protocol("pointwise")
def _pointwise(exp, model, data) -> tuple[dict, str]:
    ev = exp.evaluation or {}
    group_by = check_group_by(exp, data.spec)
    uplift = check_uplift(exp, data.spec)
    policy = check_policy(exp, data.spec)
    results = {}
    for split in ev.get("splits", ["valid", "test"]):
        if split in data.manifest["splits"]:
            # the model's inputs plus what metrics group by (GAUC's groups, domains)
            keys = [c for c in [group_by, *(f.name for f in data.spec.of_kind("domain")),
                                *(policy or {}).get("outcomes", ()), *uplift_columns(uplift)] if c]
            ds = data.dataset(split, 4096, features=list(dict.fromkeys(list(model.input_names) + keys)))
            results[split] = evaluate_split(model, ds, data.spec, ev.get("max_batches"), trained_tasks(model),
                                            group_by, uplift, policy)
    return results, ""


@register_protocol("losses")
def _losses(exp, model, data) -> tuple[dict, str]:
    """A label-free model (an autoencoder's pretraining): each of its losses, unweighted, averaged per split."""
    ev = exp.evaluation or {}
    results = {}
    for split in ev.get("splits", ["valid", "test"]):
        if split in data.manifest["splits"]:
            ds = data.dataset(split, 4096, features=list(model.input_names))
            results[split] = {"overall": {"losses": model.mean_losses(ds, ev.get("max_batches"))}}
    return results, " (label-free: the model's own losses, unweighted)"


@register_protocol("retrieval")
def _retrieval(exp, model, data) -> tuple[dict, str]:
    """Full-corpus Recall / HitRate / NDCG@K (+ the popularity baseline) per split: training/retrieval.py's protocol.
    `evaluation: {ks: [10, 50, 100], max_users: N}` in the experiment."""
    from .retrieval import evaluate_retrieval

    ev = exp.evaluation or {}
    ks = tuple(int(k) for k in ev.get("ks", (10, 50, 100)))
    results = {}
    for split in ev.get("splits", ["valid", "test"]):
        if split in data.manifest["splits"]:
            r = evaluate_retrieval(model, data, split=split, ks=ks, max_users=ev.get("max_users"))
            results[split] = {"overall": {f"{who} ({view})": r[key][view]
                                          for who, key in ((exp.model, "model"), ("popularity", "popularity"))
                                          for view in ("filtered", "all")},
                              "protocol": r["protocol"]}
    return results, " (full-corpus retrieval; filtered = the user's earlier items removed)"


@register_protocol("sampled")
def _sampled(exp, model, data) -> tuple[dict, str]:
    """Leave-one-out with sampled negatives (training/ranking.py): HIT/NDCG@k, MRR, AUC, GAUC per split and mode.
    `evaluation: {modes: [recommendation, search], ks: [1, 5, 10, 50], max_rows: N}` in the experiment."""
    from .ranking import MODES, evaluate_sampled

    ev = exp.evaluation or {}
    results = {}
    for split in ev.get("splits", ["valid", "test"]):
        if split in data.manifest["splits"]:
            r = evaluate_sampled(model, data, split, modes=ev.get("modes", MODES), ks=ev.get("ks", (1, 5, 10, 50)),
                                 max_rows=ev.get("max_rows"))
            results[split] = {"overall": {f"{data.spec.labels[0].task} ({mode})": m for mode, m in r.items()}}
    return results, " (1 positive + sampled negatives per row)"
