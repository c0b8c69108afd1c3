"""The model zoo: a registry of `name -> (build function, config dataclass)`.

    model = build_model("din", spec, artifacts, {"attention_units": [80, 40]})     # a ZooModel (models/base.py)
    served = rebuild(model, artifacts, pq_subspaces=16)                            # same model, other params

Every model takes `build_inputs(spec)` and returns `{task: prediction}` for each label of the spec; its config is a
dataclass whose fields are the hyper-parameters an experiment YAML may set (unknown keys are errors). A built
model knows its registry name (`zoo_name`) and config (`config`), so it can be built again with other params.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

MODELS: dict[str, "ModelEntry"] = {}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., Any]
    config_cls: type
    doc: str


def register_model(name: str, config_cls: type):
    def deco(fn):
        MODELS[name] = ModelEntry(name, fn, config_cls, (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


def model_config(name: str, params: dict | None = None, source: str = "model") -> Any:
    """The config dataclass of model `name` from a dict; unknown or mistyped keys raise ValueError naming them."""
    _load_all()
    if name not in MODELS:
        raise ValueError(f"{source}: unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    cls = MODELS[name].config_cls
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = dict(params or {})
    for key, value in params.items():
        if key not in fields:
            raise ValueError(f"{source}.{key}: unknown hyper-parameter of {name}; known: {', '.join(fields)}")
        default = fields[key].default
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{source}.{key}: expected a list such as {list(default) or [1, 2]}, got {value!r}")
            kinds = {type(v) for v in default}
            if kinds and not all(type(v) in kinds or (float in kinds and type(v) is int) for v in value):
                want = " or ".join(sorted(k.__name__ for k in kinds))
                raise ValueError(f"{source}.{key}: expected a list of {want}, got {value!r}")
            params[key] = tuple(value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(f"{source}.{key}: expected true/false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{source}.{key}: expected a number, got {value!r}")
        elif isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
            raise ValueError(f"{source}.{key}: expected an integer, got {value!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise ValueError(f"{source}.{key}: expected a string, got {value!r}")
    cfg = cls(**params)
    if hasattr(cfg, "check"):               # a config's own rules on values ("budget: must lie in (0, 1]")
        try:
            cfg.check()
        except ValueError as e:
            raise ValueError(f"{source}.{e}") from None
    return cfg


def build_model(name: str, spec, artifacts, params: dict | None = None, source: str = "model"):
    """Build zoo model `name` for a spec; returns an uncompiled ZooModel."""
    return _build(name, spec, artifacts, model_config(name, params, source))


def rebuild(model, artifacts, **overrides):
    """`model` built again (fresh weights) from its registry entry and config with `overrides` applied."""
    return _build(model.zoo_name, model.spec, artifacts, dataclasses.replace(model.config, **overrides))


def _build(name: str, spec, artifacts, cfg):
    model = MODELS[name].build(spec, artifacts, cfg)
    object.__setattr__(model, "zoo_name", name)      # plain attributes: not tracked by Keras
    object.__setattr__(model, "config", cfg)
    return model


def _load_all() -> None:
    from . import (deepfm, din, dnn, macdae, meta_controller, mmoe, multi_interest, nfm, ple,  # noqa: F401
                   seminar, seminar_psu, shared_bottom, sr_foundation, star, two_tower)  # each registers itself
