"""Pretrain -> fine-tune: restore variables by name from another run, remap embedding rows by raw id, freeze.

Variables are matched by name (`emb_movie_id/embeddings:0`, `dnn_dense0/kernel:0`), the names zoo models give their
layers. Embedding tables are copied row by row through both runs' vocabularies, so a fine-tune dataset whose
vocabulary differs (a cold-start domain) still gets the pretrained vector of every id the two share.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tfrec_zoo.features import Artifacts, FeatureSpec

# Freeze levels (S&R Foundation freezes "L0 and L1"): layers say their level (`freeze_level`, set where they are
# made: tfrec_zoo.inputs.at_level): 0 = embedding tables, 1 = the feature transforms and projections right above
# them. `freeze_level: N` freezes every layer of a level below N.


@dataclass
class RestoreReport:
    restored: list[str] = field(default_factory=list)
    remapped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)
    filled: dict[str, list] = field(default_factory=dict)    # the model's `fill_unseen_rows()` after restoring

    def summary(self) -> str:
        lines = [f"restored {len(self.restored)} variables, skipped {len(self.skipped)}, froze {len(self.frozen)} layers"]
        lines += [f"  {what}: {', '.join(map(str, rows))}" for what, rows in self.filled.items()]
        lines += [f"  remapped {k}: {v}" for k, v in self.remapped.items()]
        lines += [f"  skipped {k}: {v}" for k, v in sorted(self.skipped.items())]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"restored": self.restored, "remapped": self.remapped, "skipped": self.skipped, "frozen": self.frozen,
                "filled": self.filled}


def _matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(re.search(p, name) for p in include):
        return False
    return not any(re.search(p, name) for p in exclude)


def _table_of_variable(name: str) -> str | None:
    m = re.match(r"^emb_(?!bucket_)(.+)/embeddings:0$", name)
    return m.group(1) if m else None


def copy_variables(source_model, target_model, *, source: tuple[FeatureSpec, Artifacts] | None = None,
                   target: tuple[FeatureSpec, Artifacts] | None = None, include: Sequence[str] = (),
                   exclude: Sequence[str] = ()) -> RestoreReport:
    """Copy every variable of `source_model` into the same-named variable of `target_model`."""
    report = RestoreReport()
    src = {v.name: v for v in source_model.variables}
    for var in target_model.variables:
        name = var.name
        if not _matches(name, include, exclude):
            report.skipped[name] = "not selected by include/exclude"
            continue
        if name not in src:
            report.skipped[name] = "not in the checkpoint"
            continue
        value = src[name].numpy()
        table = _table_of_variable(name)
        if table and source and target and table in source[1].vocabs and table in target[1].vocabs:
            value, note = _remap_rows(value, var.numpy(), table, source, target)
            report.remapped[name] = note
        elif tuple(value.shape) != tuple(var.shape):
            report.skipped[name] = f"shape {tuple(value.shape)} in the checkpoint, {tuple(var.shape)} here"
            continue
        var.assign(value)
        report.restored.append(name)
    return report


def _remap_rows(src_rows: np.ndarray, dst_rows: np.ndarray, table: str, source, target) -> tuple[np.ndarray, str]:
    (s_spec, s_art), (t_spec, t_art) = source, target
    s_oov = s_spec.table_config(table).vocab.oov_buckets
    t_oov = t_spec.table_config(table).vocab.oov_buckets
    s_index = {v: i + s_oov for i, v in enumerate(s_art.vocabs[table])}
    out = dst_rows.copy()
    n = min(s_oov, t_oov)
    out[:n] = src_rows[:n]                     # OOV buckets carry over
    hits = 0
    for j, v in enumerate(t_art.vocabs[table]):
        i = s_index.get(v)
        if i is not None:
            out[j + t_oov] = src_rows[i]
            hits += 1
    return out, f"{hits}/{len(t_art.vocabs[table])} ids found in the pretrained vocabulary"


def freeze(model, patterns: Sequence[str] = (), level: int | None = None) -> list[str]:
    """Set `trainable=False` on every layer whose name matches a pattern or a level below `level`, nested layers
    included (a lifelong model's `emb_movie_id` lives inside its `item_modalities` layer: `^emb_` freezes the
    embedding and leaves the modality projections trainable; `^item_modalities$` freezes both). Returns the frozen
    layers' names. Raises ValueError for a pattern that matches no layer (it would silently freeze nothing)."""
    layers, seen = [], set()
    for top in model.layers:
        for layer in top._flatten_layers(include_self=True, recursive=True):
            if id(layer) not in seen:
                seen.add(id(layer))
                layers.append(layer)
    for p in patterns:
        if not any(re.search(p, layer.name) for layer in layers):
            names = sorted({layer.name for layer in layers if layer.weights})
            raise ValueError(f"freeze: {p!r} matches no layer of the model (layers with weights: {names})")
    frozen = []
    for layer in layers:
        at = getattr(layer, "freeze_level", None)
        if any(re.search(p, layer.name) for p in patterns) or (level and at is not None and at < level):
            layer.trainable = False
            frozen.append(layer.name)
    return frozen
