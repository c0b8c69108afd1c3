"""MMoE (Ma et al., KDD 2018): shared experts, a gate and a tower per task."""
from __future__ import annotations

from dataclasses import dataclass

from ..inputs import FeatureEmbeddings, build_inputs
from ..layers import MixtureOfExperts
from . import register_model
from .common import concat, embed_fields, functional_model, head, mlp, pooled_sequences


@dataclass(frozen=True)
class MMoEConfig:
    num_experts: int = 4
    expert_units: tuple = (128, 64)
    tower_units: tuple = (64,)
    dropout: float = 0.0


@register_model("mmoe", MMoEConfig)
def mmoe(spec, artifacts, cfg: MMoEConfig):
    """MMoE: every feature (histories mean-pooled) -> shared experts -> per-task softmax gates and towers."""
    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts)
    x = concat(embed_fields(spec, emb, inputs).all() + pooled_sequences(spec, emb, inputs), "mmoe_concat")
    labels = spec.labels
    task_inputs = MixtureOfExperts(cfg.num_experts, cfg.expert_units, len(labels), cfg.dropout, name="mmoe")(x)
    outputs, logits = {}, {}
    for lab, t in zip(labels, task_inputs):    # tower then head per task: the order layers draw their init
        tower = mlp(t, cfg.tower_units, dropout=cfg.dropout, name=f"tower_{lab.task}")
        outputs[lab.task], logits[lab.task] = head(lab, tower)
    return functional_model(inputs, outputs, "mmoe", spec, logits=logits)
