"""A plain DNN: the single-domain baseline of multi-domain recommendation (and the deep part of Wide & Deep)."""
from __future__ import annotations

from dataclasses import dataclass

from ..inputs import FeatureEmbeddings, build_inputs
from . import register_model
from .common import concat, embed_fields, functional_model, heads, mlp, pooled_sequences


@dataclass(frozen=True)
class DNNConfig:
    dnn_units: tuple = (256, 128)
    dropout: float = 0.0


@register_model("dnn", DNNConfig)
def dnn(spec, artifacts, cfg: DNNConfig):
    """DNN: every feature (histories mean-pooled) -> one MLP -> one head per task.

        x = [e_1; ..; e_F; mean(history)]      h = MLP(x)      y_t = head_t(h)  (sigmoid(w_t h + b_t) for binary)

    The deep network of Wide & Deep (Cheng et al., DLRS 2016), as STAR (Sheng et al., CIKM 2021) and the
    Scenario-Wise-Rec benchmark use it for the single-domain baseline: trained on one domain's rows it is the
    one-model-per-domain baseline (the experiment selects the rows; the model needs no domain feature). On a spec
    with a `domain` feature, the domain's embedding is one field among the others.
    """
    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts)
    x = concat(embed_fields(spec, emb, inputs).all() + pooled_sequences(spec, emb, inputs), "dnn_concat")
    outputs, logits = heads(spec.labels, mlp(x, cfg.dnn_units, dropout=cfg.dropout, name="dnn"))
    return functional_model(inputs, outputs, "dnn", spec, logits=logits)
