"""DIN (Zhou et al., KDD 2018): the candidate item attends over the user's behaviour sequence."""
from __future__ import annotations

from dataclasses import dataclass

from ..inputs import FeatureEmbeddings, build_inputs
from ..layers import PriorLogit, TargetAttention, ValidSteps
from . import register_model
from .common import concat, embed_fields, functional_model, heads, mlp, pooled_sequences, target_and_history


@dataclass(frozen=True)
class DINConfig:
    target: str = ""                    # default: the spec's keys.item
    history: str = ""                   # default: the first sequence whose id field shares the target's table
    attention_units: tuple = (80, 40)
    attention_activation: str = "sigmoid"   # Dice's BatchNorm statistics do not settle on small data
    # DIN's paper keeps raw weights ("none"); over 50-539 steps their sums grow with the history and training
    # suffers: test AUC on ml-latest-small 0.7426 with "none" vs 0.7826 with "softmax" (benchmarks/baselines.py)
    attention_normalization: str = "softmax"
    dnn_units: tuple = (200, 80)
    dropout: float = 0.0
    # a dense input holding an earlier model's probability for the example (the cloud model's, joined by a
    # pipeline stage): its logit is a fixed offset of every binary task's logit, so the model learns a residual
    # on it (the on-device model of device-cloud recommendation, whose official code does the same)
    prior: str = ""


@register_model("din", DINConfig)
def din(spec, artifacts, cfg: DINConfig):
    """DIN: target attention over the history, concatenated with every other feature, then a DNN per task."""
    target, history, _ = target_and_history(spec, cfg.target or None, cfg.history or None)
    if cfg.prior and any(f.name == cfg.prior and f.is_joined for f in spec.features):
        raise ValueError(f"prior: {cfg.prior!r} is joined from an earlier stage's predictions: add `join: "
                         f"{{{cfg.prior}: {{from: STAGE}}}}` to the experiment (training/join.py)")
    if cfg.prior and (cfg.prior not in {f.name for f in spec.inputs} or spec[cfg.prior].kind != "dense"):
        raise ValueError(f"prior: {cfg.prior!r} is not a dense input of {spec.source} (dense inputs: "
                         f"{[f.name for f in spec.of_kind('dense')]}); name the column that holds the earlier "
                         "model's probability")
    if cfg.prior and any(lab.type != "binary" for lab in spec.labels):
        raise ValueError(f"prior: a probability offsets binary tasks only, and {spec.source} has "
                         f"{[lab.task for lab in spec.labels if lab.type != 'binary']}")
    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts)
    mask = emb.mask(history, inputs)
    # pair every history id field with the scalar feature that shares its table (item <-> hist item, cate <-> ...)
    scalars = {spec.table_of(f.name): f.name for f in spec.inputs if f.kind in ("id", "domain")}
    pairs = [(scalars[spec.table_of(sf.name)], sf.name) for sf in spec[history].fields
             if sf.kind == "id" and spec.table_of(sf.name) in scalars]
    query = concat([emb.id(q, inputs) for q, _ in pairs], "din_query")
    # embed only the valid history steps ([N, D]): lookups, attention and gradients skip the padding
    # (5.2x DIN training throughput on taobao-head, benchmarks/train_throughput.py)
    keys = concat([emb.id(k, {k: ValidSteps(name=f"valid_{k}")([inputs[k], mask])}) for _, k in pairs], "din_keys")
    interest = TargetAttention(cfg.attention_units, cfg.attention_activation, cfg.attention_normalization,
                               name="din_attention")([query, keys, mask])
    flat = embed_fields(spec, emb, inputs, exclude=(cfg.prior,))
    others = pooled_sequences(spec, emb, inputs, exclude=(history,))
    x = concat(flat.all() + others + [interest], "din_concat")
    hidden = mlp(x, cfg.dnn_units, dropout=cfg.dropout, name="dnn")
    prior = PriorLogit(name="prior_logit")(inputs[cfg.prior]) if cfg.prior else None
    outputs, logits = heads(spec.labels, hidden, extra_logit=prior)
    return functional_model(inputs, outputs, "din", spec, logits=logits)
