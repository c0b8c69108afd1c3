"""PLE for multi-domain recommendation: each (domain, task) pair is one PLE task branch, kept by the row's domain."""
from __future__ import annotations

from dataclasses import dataclass

from ..inputs import FeatureEmbeddings, build_inputs
from ..layers import PLE
from ..layers.domain_select import DomainSelect
from . import register_model
from .common import concat, domain_feature, domain_rows, embed_fields, functional_model, head, mlp, pooled_sequences


@dataclass(frozen=True)
class PLEConfig:
    num_levels: int = 2
    num_shared_experts: int = 1
    num_task_experts: int = 1           # per (domain, task) branch
    expert_units: tuple = (64,)
    tower_units: tuple = (32,)          # each branch's tower; () = the branch's PLE output goes to the head
    dropout: float = 0.0
    domain: str = ""                    # the domain feature (default: the spec's only one)


@register_model("ple", PLEConfig)
def ple(spec, artifacts, cfg: PLEConfig):
    """PLE with domains as tasks: one branch per (domain row, task), the row's own domain's branch per task.

        x = [e_1; ..; e_F; e_dom; mean(history)]
        [g_{0,1} .. g_{R-1,T}] = PLE(x)      (tfrec_zoo.layers.PLE with R*T task branches; branch r*T + t)
        y_t = head_t(MLP_{t,d}(g_{d,t}))     with d = the row's domain row (OOV rows first: unknown -> row 0)

    PLE (Tang et al., RecSys 2020) is multi-task; multi-domain work runs it by treating each domain as a task (STAR,
    Sheng et al., CIKM 2021, for MMoE-style baselines; the Scenario-Wise-Rec benchmark's PLE has one specific-expert
    group, gate and tower per domain and keeps the row's domain's output). With several tasks, every (domain, task)
    pair is a branch with its own experts and gate, so one spec with one task is the plain per-domain form. The
    domain embedding is an input too, so the shared experts and gates also see the domain. The head's final linear
    layer is shared by the domains of a task.
    """
    dom = domain_feature(spec, "ple", cfg.domain or None)
    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts)
    rows, num_rows = domain_rows(spec, emb, inputs, dom)
    x = concat(embed_fields(spec, emb, inputs).all() + pooled_sequences(spec, emb, inputs), "ple_concat")
    labels = spec.labels
    branches = PLE(num_rows * len(labels), cfg.num_levels, cfg.num_shared_experts, cfg.num_task_experts,
                   cfg.expert_units, cfg.dropout, name="ple")(x)
    outputs, logits = {}, {}
    for t, lab in enumerate(labels):
        towers = [mlp(branches[r * len(labels) + t], cfg.tower_units, dropout=cfg.dropout,
                      name=f"tower_{lab.task}_d{r}") for r in range(num_rows)]
        own = DomainSelect(name=f"tower_{lab.task}_own")([*towers, rows])
        outputs[lab.task], logits[lab.task] = head(lab, own)
    return functional_model(inputs, outputs, "ple", spec, logits=logits)
