"""STAR (Sheng et al., CIKM 2021): partitioned normalization, a star-topology FCN and an auxiliary network."""
from __future__ import annotations

from dataclasses import dataclass

from .._tf import keras
from ..inputs import FeatureEmbeddings, build_inputs
from ..layers import STARTopology
from . import register_model
from .common import concat, domain_feature, domain_rows, embed_fields, functional_model, head, mlp, pooled_sequences


@dataclass(frozen=True)
class STARConfig:
    star_units: tuple = (256, 128)
    aux_units: tuple = (64,)            # the auxiliary network's hidden layers
    partitioned_norm: bool = True
    # PN's moving statistics at inference: 0.9, not BN's usual 0.99. At 0.99 the averages still hold ~25% of their
    # zero / one start after 140 steps (2 epochs of ml-latest-small-domains at batch 1024): mean test AUC over
    # its domains 0.685 at 0.99, 0.770 at 0.9, 0.773 without PN (one run each, benchmarks/sr_foundation.py setup)
    norm_momentum: float = 0.9
    dropout: float = 0.0                # on the auxiliary network's hidden layers
    domain: str = ""                    # the domain feature (default: the spec's only one)


@register_model("star", STARConfig)
def star(spec, artifacts, cfg: STARConfig):
    """STAR: PN + star-topology FCN over the features, plus an auxiliary network over the domain and the features.

        x   = [e_1; ..; e_F; mean(history)]                       (the domain feature is not in x: it picks p)
        h   = STAR_p(PN_p(x))          per level: act((W * W_p)^T h + b + b_p)   (tfrec_zoo.layers.STARTopology)
        s_a = w_{a,t}^T MLP_aux([e_dom; x]) + b_{a,t}              the auxiliary network's logit, per task
        y_t = sigmoid(w_t^T h + b_t + s_a)                         (binary; other label types take the summed logit)

    p = the row's domain row (OOV rows first: an unknown domain gets row 0, whose weights start as the shared ones).
    As in the paper the domain indicator reaches the model through the auxiliary network and the per-domain
    weights; batches here mix domains, so PN's training statistics are each domain's rows of the batch.
    """
    dom = domain_feature(spec, "star", cfg.domain or None)
    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts)
    rows, num_rows = domain_rows(spec, emb, inputs, dom)
    fields = embed_fields(spec, emb, inputs)
    domain_emb = fields.categorical.pop(dom.name)
    x = concat(fields.all() + pooled_sequences(spec, emb, inputs), "star_concat")
    h = STARTopology(num_rows, cfg.star_units, partitioned_norm=cfg.partitioned_norm,
                     norm_momentum=cfg.norm_momentum, name="star")([x, rows])
    aux = mlp(keras.layers.Concatenate(name="aux_concat")([domain_emb, x]), cfg.aux_units, dropout=cfg.dropout,
              name="aux")
    outputs, logits = {}, {}
    for lab in spec.labels:
        units = lab.num_classes if lab.type == "multiclass" else 1
        aux_logit = keras.layers.Dense(units, name=f"aux_{lab.task}_logit")(aux)
        outputs[lab.task], logits[lab.task] = head(lab, h, extra_logit=aux_logit)
    return functional_model(inputs, outputs, "star", spec, logits=logits)
