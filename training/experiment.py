"""Experiment configs (`training/experiments/*.yaml`), validated like feature specs: errors name file and key.

    name: din-ml-latest-small
    dataset: ml-latest-small          # a builder name (built into data/NAME on first use) or a dataset directory
    model: din
    params: {attention_units: [80, 40]}
    tasks: {like: {loss_weight: 1.0}} # optional per-task overrides of the spec's loss weights
    losses: {align: 0.1}              # optional weights of the model's auxiliary losses (0 switches one off)
    optimizer: {name: adam, learning_rate: 0.001}
    batch_size: 1024
    epochs: 2
    strategy: default                 # default | mirrored | multi_worker | parameter_server
    early_stopping: {monitor: val_like_auc, mode: max, patience: 2}
    evaluation: {splits: [valid, test], group_by: user_id}
    restore: {checkpoint: RUN_DIR_OR_CKPT, include: ['^emb_'], freeze: ['^emb_']}
    tune: {algorithm: random, max_trials: 4, objective: val_like_auc, space: {...}}
    domain_loss_weights: {scene: {search: 1.0, rec: 0.3}}   # multi-domain: scale each domain's loss
    join: {cloud_prior: {from: cloud}}    # an earlier stage's predictions as a column (training/join.py)
    features: {drop: [session_history]}   # the inputs the model may see (`keep: [...]` or `drop: [...]`, top-level
        # spec names; labels and an id's side attributes follow): a cloud model that must not read in-session clicks
    replay: {scores: {cloud: cloud_prior, device: device_score}, keep: [device_history]}
        # one example per replayed list with each mechanism's outcome (training/replay_steps.py; after join, rows)
    rows: {drop: {domain: [0]}}       # train and evaluate on a subset of the dataset's rows (tfrec_zoo/data/subset.py):
        # keep / drop {column: [ids]}, share {split: fraction} (e.g. {keep: {domain: [0]}, share: {train: 0.1}}: a
        # cold-start domain's 10%), seed; written once beside the datasets (data/subsets/)
    pretrain: {model: seminar_psu, epochs: 1, params: {...}, include: ['^emb_'], freeze: [...]}
        # pretrain -> fine-tune in one run: the pretraining model is trained first into RUN_DIR/pretrain (same
        # dataset unless `dataset:` is given; params default to the fine-tuning params), then restored by name
        # (`include` / `exclude` / `freeze` / `freeze_level` as in `restore:`) before fine-tuning. It is the
        # one-stage form of `stages:`.
    stages:                           # models trained before this one, in order, each into RUN_DIR/NAME
      - {name: psu, model: seminar_psu, epochs: 1, params: {...}, losses: {align: 0.1}}
      - {name: warm, model: din, dataset: other-domain, restore: {from: psu, include: ['^emb_']}, evaluate: true}
    restore: {from: warm, include: ['^emb_'], freeze_level: 1}   # the final model restores an earlier stage
        # each stage: name, model, and optionally dataset / rows / features / join / replay / params / losses /
        # tasks / epochs / optimizer / batch_size / steps_per_epoch / restore ({from: EARLIER_STAGE, ...}) /
        # evaluate (default false) / evaluation (its own; implies evaluate); `join.*.from` names an earlier stage
        # too. A stage's
        # `rows` is its own (not the final model's: pretraining drops the rows fine-tuning keeps). A stage
        # is a run of its own: killed, it resumes; finished, it is not trained again.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tfrec_zoo.features import safe_yaml
from tfrec_zoo.features.spec import FeatureSpecError

from .join import check_join, resolve_join
from .replay_steps import check_replay

STRATEGIES = ("default", "mirrored", "multi_worker", "parameter_server")
OPTIMIZERS = ("adam", "adagrad", "sgd", "rmsprop")


class ExperimentError(FeatureSpecError):
    """An experiment file is wrong; the message names the file, the key and the fix."""


@dataclass
class Experiment:
    name: str
    dataset: str
    model: str
    params: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)
    losses: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=lambda: {"name": "adam", "learning_rate": 1e-3})
    batch_size: int = 1024
    epochs: int = 1
    steps_per_epoch: int | None = None
    shuffle_buffer: int = 100_000
    seed: int = 0
    strategy: str = "default"
    early_stopping: dict | None = None
    evaluation: dict = field(default_factory=lambda: {"splits": ["valid", "test"]})
    restore: dict | None = None
    tune: dict | None = None
    domain_loss_weights: dict | None = None
    features: dict | None = None
    join: dict | None = None
    rows: dict | None = None
    replay: dict | None = None
    pretrain: dict | None = None
    stages: list | None = None
    source: str = "<memory>"

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "source"}


_TYPES = {"name": str, "dataset": str, "model": str, "params": dict, "tasks": dict, "losses": dict, "optimizer": dict,
          "batch_size": int, "epochs": int, "steps_per_epoch": (int, type(None)), "shuffle_buffer": int, "seed": int,
          "strategy": str, "early_stopping": (dict, type(None)), "evaluation": dict, "restore": (dict, type(None)),
          "tune": (dict, type(None)), "domain_loss_weights": (dict, type(None)), "rows": (dict, type(None)),
          "features": (dict, list, type(None)), "join": (dict, type(None)), "replay": (dict, type(None)),
          "pretrain": (dict, type(None)),
          "stages": (list, type(None))}
_REQUIRED = ("name", "dataset", "model")
_SUBKEYS = {"optimizer": {"name", "learning_rate", "clipnorm"},
            "early_stopping": {"monitor", "mode", "patience", "min_delta"},
            "evaluation": {"splits", "group_by", "domain", "max_batches", "ks", "max_users", "modes", "max_rows",
                           "uplift", "policy"},
            "pretrain": {"model", "dataset", "rows", "params", "losses", "epochs", "optimizer", "batch_size", "include",
                         "exclude", "freeze", "freeze_level"},
            "features": {"keep", "drop"},
            "restore": {"checkpoint", "from", "include", "exclude", "freeze", "freeze_level"},
            "tune": {"algorithm", "max_trials", "objective", "direction", "space", "epochs", "executions_per_trial",
                     "max_epochs", "factor"}}


def _set(raw: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    obj = raw
    for k in keys[:-1]:
        obj = obj.setdefault(k, {})
        if not isinstance(obj, dict):
            raise ValueError(f"--set {dotted}: {k!r} is not a mapping")
    obj[keys[-1]] = value


def parse_experiment(raw: Any, source: str = "<memory>", overrides: list[str] | None = None) -> Experiment:
    """Validate a parsed experiment; `overrides` are `key.sub=value` strings (values parsed as YAML)."""
    def fail(path, problem, fix=""):
        raise ExperimentError(source, path, problem, fix)

    if not isinstance(raw, dict):
        fail("", "an experiment must be a mapping", "start with `name:`, `dataset:`, `model:`")
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            fail(f"--set {item}", "expected key=value", "write e.g. --set epochs=3")
        key, value = item.split("=", 1)
        try:
            parsed = safe_yaml.load(value)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            fail(f"--set {key.strip()}", f"{value[:80]!r} is not a YAML value ({problem})",
                 "quote it, or write a list as [1, 2] and a mapping as {a: 1}")
        try:
            _set(raw, key.strip(), parsed)
        except ValueError as e:
            fail(f"--set {key.strip()}", str(e).split(": ", 1)[-1])
    allowed = set(_TYPES)
    for key in raw:
        if key not in allowed:
            fail(key, f"unknown key {key!r}", f"use one of {', '.join(sorted(allowed))}")
    for key in _REQUIRED:
        if key not in raw:
            fail(key, "is required", f"add `{key}:`")
    for key, value in raw.items():
        typ = _TYPES[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if isinstance(value, bool) or not isinstance(value, types):
            fail(key, f"expected {' or '.join(t.__name__ for t in types if t is not type(None))}, got {value!r}")
        if key in _SUBKEYS and isinstance(value, dict):
            for sub in value:
                if sub not in _SUBKEYS[key]:
                    fail(f"{key}.{sub}", f"unknown key {sub!r}", f"use one of {', '.join(sorted(_SUBKEYS[key]))}")
    exp = Experiment(**raw, source=source)
    for key in ("batch_size", "epochs"):
        if getattr(exp, key) <= 0:
            fail(key, f"must be > 0, got {getattr(exp, key)}")
    if exp.strategy not in STRATEGIES:
        fail("strategy", f"{exp.strategy!r} is not one of {', '.join(STRATEGIES)}", f"use one of {', '.join(STRATEGIES)}")
    opt = exp.optimizer.get("name", "adam")
    if opt not in OPTIMIZERS:
        fail("optimizer.name", f"{opt!r} is not one of {', '.join(OPTIMIZERS)}")
    lr = exp.optimizer.get("learning_rate", 1e-3)
    if not isinstance(lr, (int, float)) or lr <= 0:
        fail("optimizer.learning_rate", f"must be a positive number, got {lr!r}")
    for task, cfg in exp.tasks.items():
        if not isinstance(cfg, dict) or set(cfg) - {"loss_weight"}:
            fail(f"tasks.{task}", f"expected {{loss_weight: W}}, got {cfg!r}")
        w = cfg.get("loss_weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            fail(f"tasks.{task}.loss_weight", f"expected a non-negative number, got {w!r}")
    for name, w in exp.losses.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            fail(f"losses.{name}", f"expected a non-negative weight, got {w!r}")
    for feat, table in (exp.domain_loss_weights or {}).items():
        if not isinstance(table, dict) or not all(isinstance(w, (int, float)) and w >= 0 for w in table.values()):
            fail(f"domain_loss_weights.{feat}", f"expected {{domain value: non-negative weight}}, got {table!r}")
    if exp.rows is not None:
        _check_rows(exp.rows, "rows", fail)
    if exp.features is not None:
        _check_features(exp.features, "features", fail)
    if exp.join is not None:
        earlier = [st["name"] for st in as_stages(exp)[0]] if (exp.stages or exp.pretrain) else None
        check_join(exp.join, "join", earlier, fail)
    if exp.replay is not None:
        check_replay(exp.replay, "replay", fail)
        _check_choice_from(exp.replay, "replay", [st["name"] for st in as_stages(exp)[0]], fail)
    _check_uplift(exp.evaluation, "evaluation", fail, exp.replay)
    if exp.early_stopping and "monitor" not in exp.early_stopping:
        fail("early_stopping.monitor", "is required", "name a metric, e.g. val_like_auc")
    from tfrec_zoo.models import model_config

    try:
        model_config(exp.model, exp.params, source="params")
    except (ValueError, TypeError) as e:
        path, _, problem = str(e).partition(": ")
        fail("model" if "unknown model" in problem else path, problem)
    _check_stages(exp, fail)
    if exp.restore is not None:
        _check_restore(exp.restore, "restore", [st["name"] for st in exp.stages or []], fail)
    if exp.pretrain is not None:
        if exp.stages:
            fail("pretrain", "both `pretrain` and `stages` are set", "write the pretraining model as a stage")
        if "model" not in exp.pretrain:
            fail("pretrain.model", "is required", "name the pretraining model, e.g. seminar_psu")
        if exp.restore:
            fail("pretrain", "both `pretrain` and `restore` are set", "keep one: pretrain restores its own run")
        if "rows" in exp.pretrain:
            _check_rows(exp.pretrain["rows"], "pretrain.rows", fail)
        try:
            model_config(exp.pretrain["model"], pretrain_params(exp), source="pretrain.params")
        except (ValueError, TypeError) as e:
            path, _, problem = str(e).partition(": ")
            fail("pretrain.model" if "unknown model" in problem else path, problem)
    return exp


STAGE_KEYS = {"name", "model", "dataset", "rows", "features", "join", "replay", "params", "losses", "tasks", "epochs",
              "optimizer", "batch_size", "steps_per_epoch", "restore", "evaluate", "evaluation"}
# run-directory entries a stage directory must not take
_RESERVED = {"backup", "checkpoints", "logs", "model", "early_stopping", "config.yaml", "metrics.json", "summary.md",
             "history.csv", "restore.json", "DONE"}


def _check_rows(rows, where: str, fail) -> None:
    from tfrec_zoo.data.subset import RowSelection

    try:
        RowSelection.parse(rows, where)
    except ValueError as e:
        path, _, problem = str(e).partition(": ")
        fail(path, problem)


def _check_features(selection, where: str, fail) -> None:
    """The shape of a `features:` selection; its names are checked against the dataset's spec when the model is
    built (FeatureSpec.select)."""
    if not isinstance(selection, dict) or len(selection) != 1 or not set(selection) <= {"keep", "drop"}:
        fail(where, f"expected {{keep: [names]}} or {{drop: [names]}}, got {selection!r}")
    names = next(iter(selection.values()))
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        fail(f"{where}.{next(iter(selection))}", f"expected a non-empty list of feature names, got {names!r}")


_FROM_KEYS = ("choice_from", "xlearner_from")


def _check_choice_from(replay: dict, where: str, earlier: list[str], fail) -> None:
    for key in _FROM_KEYS:
        src = replay.get(key)
        if src is not None and "/" not in src and src not in earlier:
            fail(f"{where}.{key}", f"{src!r} is not an earlier stage" + (
                f" (earlier: {', '.join(earlier)})" if earlier else " (no stage before it)"))


def resolve_replay(replay: dict | None, run_dir) -> dict | None:
    """`choice_from` / `xlearner_from: STAGE` -> that stage's run directory RUN_DIR/STAGE (a path stays)."""
    if not replay or run_dir is None:
        return replay
    return {**replay, **{k: str(Path(run_dir) / replay[k]) for k in _FROM_KEYS
                         if replay.get(k) and "/" not in replay[k]}}


def _check_uplift(evaluation: dict, where: str, fail, replay: dict | None = None) -> None:
    """`evaluation.uplift: {control: TASK, treatments: [TASK, ...]}`: with `replay:` the tasks are its mechanisms
    (checked here); otherwise they are checked against the spec before training."""
    up = (evaluation or {}).get("uplift")
    if up is None:
        return
    if not isinstance(up, dict) or not isinstance(up.get("control"), str) or set(up) - {"control", "treatments"}:
        fail(f"{where}.uplift", f"expected {{control: TASK, treatments: [TASK, ...]}}, got {up!r}")
    tr = up.get("treatments")
    if tr is not None and (not isinstance(tr, list) or not tr or not all(isinstance(t, str) for t in tr)):
        fail(f"{where}.uplift.treatments", f"expected a non-empty list of task names, got {tr!r}")
    mechanisms = list((replay or {}).get("scores") or {})
    if mechanisms:
        for key, names in (("control", [up["control"]]), ("treatments", tr or [])):
            for t in names:
                if t not in mechanisms:
                    fail(f"{where}.uplift.{key}", f"{t!r} is not a mechanism of `replay.scores` (those: "
                         f"{', '.join(mechanisms)})")


def _check_restore(restore: dict, where: str, earlier: list[str], fail) -> None:
    if ("checkpoint" in restore) == ("from" in restore):
        fail(where, "give one of `checkpoint:` (a run directory) or `from:` (an earlier stage)")
    if "from" in restore and restore["from"] not in earlier:
        fail(f"{where}.from", f"{restore['from']!r} is not an earlier stage" + (
            f" (earlier: {', '.join(earlier)})" if earlier else " (no stage before it)"))


def _check_stages(exp: Experiment, fail) -> None:
    from tfrec_zoo.models import model_config

    names: list[str] = []
    for i, st in enumerate(exp.stages or []):
        where = f"stages[{i}]"
        if not isinstance(st, dict):
            fail(where, f"expected a mapping with name and model, got {st!r}")
        for key in st:
            if key not in STAGE_KEYS:
                fail(f"{where}.{key}", f"unknown key {key!r}", f"use one of {', '.join(sorted(STAGE_KEYS))}")
        for key in ("name", "model"):
            if not isinstance(st.get(key), str):
                fail(f"{where}.{key}", "is required (a string)")
        name = st["name"]
        if not name.replace("_", "").replace("-", "").isalnum() or name in _RESERVED or name in names:
            fail(f"{where}.name", f"{name!r} must be a new name of letters, digits, '-', '_' (it becomes "
                 f"RUN_DIR/{name}) and not one of {', '.join(sorted(_RESERVED))}")
        for key, typ in (("params", dict), ("losses", dict), ("tasks", dict), ("optimizer", dict),
                         ("restore", dict), ("epochs", int), ("batch_size", int), ("evaluate", bool),
                         ("evaluation", dict)):
            if key in st and not isinstance(st[key], typ):
                fail(f"{where}.{key}", f"expected {typ.__name__}, got {st[key]!r}")
        if "restore" in st:
            _check_restore(st["restore"], f"{where}.restore", names, fail)
        if "rows" in st:
            _check_rows(st["rows"], f"{where}.rows", fail)
        if "features" in st:
            _check_features(st["features"], f"{where}.features", fail)
        if "join" in st:
            check_join(st["join"], f"{where}.join", names, fail)
        if "replay" in st:
            check_replay(st["replay"], f"{where}.replay", fail)
            _check_choice_from(st["replay"], f"{where}.replay", names, fail)
        if "evaluation" in st:
            for sub in st["evaluation"]:
                if sub not in _SUBKEYS["evaluation"]:
                    fail(f"{where}.evaluation.{sub}", f"unknown key {sub!r}",
                         f"use one of {', '.join(sorted(_SUBKEYS['evaluation']))}")
            _check_uplift(st["evaluation"], f"{where}.evaluation", fail, st.get("replay"))
        try:
            model_config(st["model"], st.get("params", {}), source=f"{where}.params")
        except (ValueError, TypeError) as e:
            path, _, problem = str(e).partition(": ")
            fail(f"{where}.model" if "unknown model" in problem else path, problem)
        names.append(name)


def stage_experiment(exp: Experiment, stage: dict, run_dir) -> Experiment:
    """The experiment of one stage (trained into RUN_DIR/NAME); `restore.from` becomes that stage's directory."""
    restore = dict(stage["restore"]) if stage.get("restore") else None
    if restore and "from" in restore:
        restore["checkpoint"] = str(Path(run_dir) / restore.pop("from"))
    return Experiment(name=f"{exp.name}-{stage['name']}", dataset=stage.get("dataset", exp.dataset),
                      rows=stage.get("rows"), features=stage.get("features"),
                      replay=resolve_replay(stage.get("replay"), run_dir),
                      join=resolve_join(stage["join"], run_dir) if stage.get("join") else None,
                      model=stage["model"], params=dict(stage.get("params", {})), tasks=dict(stage.get("tasks", {})),
                      losses=dict(stage.get("losses", {})), optimizer=stage.get("optimizer", exp.optimizer),
                      batch_size=int(stage.get("batch_size", exp.batch_size)), epochs=int(stage.get("epochs", 1)),
                      steps_per_epoch=stage.get("steps_per_epoch"), shuffle_buffer=exp.shuffle_buffer, seed=exp.seed,
                      restore=restore, evaluation=stage_evaluation(exp, stage),
                      source=f"{exp.source}: stages.{stage['name']}")


def stage_evaluation(exp: Experiment, stage: dict) -> dict:
    """A stage's own `evaluation:`, else the experiment's when `evaluate: true`, else none (no split)."""
    if "evaluation" in stage:
        return {"splits": ["valid", "test"], **stage["evaluation"]}
    return exp.evaluation if stage.get("evaluate") else {"splits": []}


def as_stages(exp: Experiment) -> tuple[list[dict], dict | None]:
    """(stages, the final model's restore) of an experiment; `pretrain:` is the one stage `pretrain`."""
    if exp.pretrain:
        pre = exp.pretrain
        stage = {"name": "pretrain", "model": pre["model"], "params": pretrain_params(exp), "tasks": exp.tasks,
                 **{k: pre[k] for k in ("dataset", "rows", "losses", "epochs", "optimizer", "batch_size") if k in pre}}
        keys = ("include", "exclude", "freeze", "freeze_level")
        return [stage], {"from": "pretrain", **{k: pre[k] for k in keys if k in pre}}
    return list(exp.stages or []), exp.restore


def pretrain_params(exp: Experiment) -> dict:
    """The pretraining model's params: the fine-tuning params it has too (an autoencoder pretrained for Wide&Deep
    shares the encoder's, not the deep tower's), overridden by `pretrain.params`, less the `freeze_*` ones (they keep
    restored weights fixed while fine-tuning; pretraining is what trains them)."""
    import dataclasses

    from tfrec_zoo.models import MODELS, _load_all

    pre = exp.pretrain or {}
    _load_all()
    entry = MODELS.get(pre.get("model"))
    known = {f.name for f in dataclasses.fields(entry.config_cls)} if entry else None
    fine = {k: v for k, v in exp.params.items() if not k.startswith("freeze_") and (known is None or k in known)}
    return {**fine, **pre.get("params", {})}


MAX_EXPERIMENT_BYTES = 1 << 20  # a hand-written config; anything larger is a wrong path (or a device)


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read an experiment YAML with the limits of feature specs (size, nesting depth, aliases, duplicate keys)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_EXPERIMENT_BYTES + 1)
    except OSError as e:
        raise ExperimentError(str(path), "", f"cannot read ({e.strerror or e})", "check the path") from None
    if len(data) > MAX_EXPERIMENT_BYTES:
        raise ExperimentError(str(path), "", f"the file is larger than {MAX_EXPERIMENT_BYTES:,} bytes",
                              "check the path: an experiment is a short YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ExperimentError(str(path), f"line {line}, byte offset {e.start}",
                              f"not UTF-8 (byte 0x{data[e.start]:02x})", "save the file as UTF-8") from None
    return parse_experiment(_load_yaml(text, str(path)), str(path), overrides)


def _load_yaml(text: str, source: str, where: str = "") -> Any:
    try:
        return safe_yaml.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = where or (f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        fix = getattr(e, "fix", None) or "fix the YAML syntax"
        raise ExperimentError(source, at, f"not valid YAML ({problem})", fix) from None
