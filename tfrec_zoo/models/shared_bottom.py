"""Shared-Bottom for multi-domain recommendation: one shared MLP, one tower per (task, domain)."""
from __future__ import annotations

from dataclasses import dataclass

from ..inputs import FeatureEmbeddings, build_inputs
from ..layers.domain_select import DomainSelect
from . import register_model
from .common import concat, domain_feature, domain_rows, embed_fields, functional_model, head, mlp, pooled_sequences


@dataclass(frozen=True)
class SharedBottomConfig:
    bottom_units: tuple = (256, 128)
    tower_units: tuple = (64,)          # each (task, domain) tower; at least one layer
    dropout: float = 0.0
    domain: str = ""                    # the domain feature (default: the spec's only one)


@register_model("shared_bottom", SharedBottomConfig)
def shared_bottom(spec, artifacts, cfg: SharedBottomConfig):
    """Shared-Bottom: every feature incl. the domain embedding -> shared MLP -> the row's own domain's tower per task.

        h = MLP_bottom([e_1; ..; e_F; e_dom; mean(history)])
        y_t = head_t(MLP_{t,d}(h))  with d = the row's domain row (OOV rows first: an unknown domain -> row 0)

    The multi-task Shared-Bottom (Caruana, 1997) with domains as tasks, as STAR (Sheng et al., CIKM 2021) and the
    Scenario-Wise-Rec benchmark run it: every domain's tower is computed and the row's own is kept. The head's final
    linear layer is shared by the domains of a task.
    """
    if not cfg.tower_units:
        raise ValueError("shared_bottom: tower_units must have at least one layer (the per-domain towers)")
    dom = domain_feature(spec, "shared_bottom", cfg.domain or None)
    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts)
    rows, num_rows = domain_rows(spec, emb, inputs, dom)
    x = concat(embed_fields(spec, emb, inputs).all() + pooled_sequences(spec, emb, inputs), "shared_bottom_concat")
    bottom = mlp(x, cfg.bottom_units, dropout=cfg.dropout, name="bottom")
    outputs, logits = {}, {}
    for lab in spec.labels:
        towers = [mlp(bottom, cfg.tower_units, dropout=cfg.dropout, name=f"tower_{lab.task}_d{r}")
                  for r in range(num_rows)]
        own = DomainSelect(name=f"tower_{lab.task}_own")([*towers, rows])
        outputs[lab.task], logits[lab.task] = head(lab, own)
    return functional_model(inputs, outputs, "shared_bottom", spec, logits=logits)
