"""DeepFM (Guo et al., IJCAI 2017): a linear term + FM pairwise interactions + a DNN, over shared field embeddings."""
from __future__ import annotations

from dataclasses import dataclass

from .._tf import keras
from ..inputs import FeatureEmbeddings, at_level, build_inputs
from ..layers import FMInteraction
from . import register_model
from .common import concat, embed_fields, functional_model, head, mlp, pooled_sequences


@dataclass(frozen=True)
class DeepFMConfig:
    fm_dim: int = 16                    # FM factor size; fields of another size are projected to it
    dnn_units: tuple = (256, 128)
    dropout: float = 0.0
    pool_sequences: bool = True         # histories enter as mean-pooled fields
    l2_embedding: float = 0.0


@register_model("deepfm", DeepFMConfig)
def deepfm(spec, artifacts, cfg: DeepFMConfig):
    """DeepFM: FM over every field (categorical, projected vectors, pooled histories) plus a DNN."""
    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts, embeddings_regularizer=keras.regularizers.l2(cfg.l2_embedding)
                            if cfg.l2_embedding else None)
    fields = embed_fields(spec, emb, inputs)
    pooled = pooled_sequences(spec, emb, inputs) if cfg.pool_sequences else []
    fm_fields = []
    for i, t in enumerate([*fields.categorical.values(), *fields.vectors.values(), *pooled]):
        if t.shape[-1] != cfg.fm_dim:
            # project fields of other widths (text vectors, wider tables) into the FM's factor space
            t = at_level(keras.layers.Dense(cfg.fm_dim, use_bias=False, name=f"fm_proj{i}"), 1)(t)
        fm_fields.append(keras.layers.Reshape((1, cfg.fm_dim), name=f"fm_field{i}")(t))
    everything = concat(fields.all() + pooled, "deepfm_concat")
    logit = keras.layers.Dense(1, name="linear")(everything)
    if len(fm_fields) > 1:
        stacked = keras.layers.Concatenate(axis=1, name="fm_fields")(fm_fields)
        logit = keras.layers.Add(name="linear_plus_fm")([logit, FMInteraction(name="fm")(stacked)])
    hidden = mlp(everything, cfg.dnn_units, dropout=cfg.dropout, name="dnn")
    outputs, logits = {}, {}
    for lab in spec.labels:
        outputs[lab.task], logits[lab.task] = head(lab, hidden, extra_logit=logit)
    return functional_model(inputs, outputs, "deepfm", spec, logits=logits)
