"""Real dataset builders: `build(NAME, out_dir)` turns a raw public dataset into a tfrec_zoo TFRecord dataset.

Each builder reads its raw files, returns DataFrames per split that match its spec in `feature_specs/NAME.yaml`,
and `build` writes them with `write_dataset`. Builders are deterministic and leakage-free (see each module).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ...features.spec import FeatureSpec, load_spec
from ...paths import feature_specs_dir
from ..interactions import describe_splits
from ..writer import write_dataset


@dataclass
class Built:
    """What a builder returns: DataFrames per split, and facts for the manifest."""

    splits: dict[str, pd.DataFrame]
    source: str
    extra: dict[str, Any] = field(default_factory=dict)
    # {id feature: label-free metadata per id} for the spec's `side_of` features (titles, genres, query texts)
    catalogues: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class Builder:
    name: str
    fn: Callable[[FeatureSpec, Path | None], Built]
    doc: str
    needs_shared: bool = True

    @property
    def spec_path(self) -> Path:
        return feature_specs_dir() / f"{self.name}.yaml"


BUILDERS: dict[str, Builder] = {}


def register(name: str, doc: str, needs_shared: bool = True):
    def deco(fn):
        BUILDERS[name] = Builder(name, fn, doc, needs_shared)
        return fn
    return deco


def get_builder(name: str) -> Builder:
    _load_all()
    if name not in BUILDERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name]


def _load_all() -> None:
    """Import every builder module of this package (each registers itself with @register)."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def build(name: str, out_dir: str | Path, *, raw_dir: str | Path | None = None, progress: bool = True,
          get_encoder=None, log=print, options: dict[str, Any] | None = None) -> dict:
    """Build dataset `name` into `out_dir`; print and return the split summary (rows/users/items).

    `options` are passed to the builder function as keywords (e.g. `max_users` for a quick deterministic subset).
    """
    builder = get_builder(name)
    spec = load_spec(builder.spec_path)
    import inspect

    accepted = inspect.signature(builder.fn).parameters
    for key in options or {}:
        if key not in accepted:
            raise ValueError(f"dataset {name!r} takes no option {key!r}; it takes: "
                             f"{', '.join(k for k in accepted if k not in ('spec', 'raw_dir')) or 'none'}")
    built = builder.fn(spec, Path(raw_dir) if raw_dir else None, **(options or {}))
    user, item = spec.keys.get("user"), spec.keys.get("item")
    summary = describe_splits(built.splits, user, item)
    manifest = write_dataset(built.splits, spec, out_dir, source=built.source, progress=progress,
                             get_encoder=get_encoder, extra={**built.extra, "summary": summary.reset_index().to_dict("records")},
                             catalogues=built.catalogues)
    log(f"{name}: wrote {out_dir}\n{summary.to_string()}")
    return manifest
