"""NFM (He and Chua, SIGIR 2017): a linear (wide) term + an MLP over the bi-interaction pooling of field embeddings."""
from __future__ import annotations

from dataclasses import dataclass

from .._tf import keras
from ..inputs import FeatureEmbeddings, at_level, build_inputs
from ..layers.autoencoder import PairwiseProducts
from . import register_model
from .common import functional_model, head
from .macdae import embedded_fields, wide_logit


@dataclass(frozen=True)
class NFMConfig:
    embedding_dim: int = 16             # every field's width in the bi-interaction (others are projected to it)
    dnn_units: tuple = (256,)
    dropout: float = 0.0                # on the bi-interaction vector (the paper's dropout after pooling)


@register_model("nfm", NFMConfig)
def nfm(spec, artifacts, cfg: NFMConfig):
    """NFM: wide per-id weights + MLP(bi-interaction pooling sum_{a<b} e_a * e_b of every field) + dense features."""
    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts)
    embedded, dense = embedded_fields(spec, emb, inputs, [f.name for f in spec.inputs if f.name != "eval_negatives"])
    rows = []
    for i, (name, t) in enumerate(embedded.items()):
        if t.shape[-1] != cfg.embedding_dim:
            t = at_level(keras.layers.Dense(cfg.embedding_dim, use_bias=False, name=f"nfm_proj{i}"), 1)(t)
        rows.append(keras.layers.Reshape((1, cfg.embedding_dim), name=f"nfm_field{i}")(t))
    stacked = keras.layers.Concatenate(axis=1, name="nfm_fields")(rows) if len(rows) > 1 else rows[0]
    x = PairwiseProducts(scale=1.0, name="bi_interaction")(stacked)
    if cfg.dropout:
        x = keras.layers.Dropout(cfg.dropout, name="bi_interaction_drop")(x)
    if dense:
        x = keras.layers.Concatenate(name="nfm_deep_input")([x, *dense.values()])
    for i, u in enumerate(cfg.dnn_units):
        x = keras.layers.Dense(u, activation="relu", name=f"nfm_dense{i}")(x)
    wide = wide_logit(spec, emb, inputs)
    outputs, logits = {}, {}
    for lab in spec.labels:
        outputs[lab.task], logits[lab.task] = head(lab, x, extra_logit=wide)
    return functional_model(inputs, outputs, "nfm", spec, logits=logits)
