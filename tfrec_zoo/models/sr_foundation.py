"""S&R multi-domain foundation model (Gong et al., CIKM 2023; arXiv 2309.08939): one model pretrained on many
search and recommendation domains, fine-tuned on a new, nearly empty one.

    user, query, item:  aspects a_id (the entity's id embedding), a_text (its frozen-LLM text vectors), a_sparse
                        (its other features: multi-hots, dense, histories mean-pooled)
                        r_e = AGF(a_id, a_text, a_sparse; gate input u)        AspectGatingFusion, per entity
                          u = e_dom (domain gating) | pooled text = mean of the encoder's tokens (mean gating)
                          | the encoder's [CLS] token output (cls gating)
    DA-MTL:             h = W_dom [r_user, r_query, r_item] + c_dom           DomainLinearMaps (one map per domain)
                        MMoE([h, e_dom]) -> one tower and head per task      (search relevance, CTR, ...)
    loss:               sum_t w_t BCE_t + lambda * D(h by domain)            D = JS | MMD (`losses: {divergence: l}`)

The paper's equations were not readable; every formula above beyond "three aspects, AGF with mean / [CLS] / domain
gating, domain embeddings + domain-specific linear maps on MMoE, JS or MMD" is [inferred]; the choices and why are
in seeds/papers/sr_foundation.md ("Formulas chosen"). Mean gating: the gate reads the entity's pooled text vector,
which for our encoder (all-MiniLM-L6-v2, mean pooling) is the mean of its token outputs, i.e. the digest's
"mean of the token embeddings". [CLS] gating reads the encoder's token output at the [CLS] position, a text feature
of its own in the spec (`encoder: all-MiniLM-L6-v2/cls`, typically `side_of` the item: one vector per catalogue
text, computed at build time). An entity without the gate's text gates on the mean of its aspects.

Domains are the rows of the domain feature's vocabulary (OOV rows first). `DomainRowCounter` records which rows
training reached; `fill_unseen_rows()` (called by the platform after a restore and after training) sets the domain
embedding and linear map of every row no example reached to the mean of the trained rows: a domain first seen at
fine-tuning starts from the average domain (then trains unless frozen), and an unknown domain value in a request
(the OOV row) is served as the average domain.

Freeze levels (`restore: {freeze_level: N}` freezes levels below N): 0 = embedding tables and lookups (the domain
embedding too), 1 = the aspect projections, AGF gates and the domain linear maps ("encoding" and "fusion + domain
adaptive" of the paper's "freeze L0 and L1": `freeze_level: 2`); the MMoE experts, gates and towers always train.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..features.spec import SequenceFeature
from ..features.text_encoders import CLS_ENCODERS
from ..inputs import FeatureEmbeddings, at_level, build_inputs
from ..layers import (AspectGatingFusion, DomainLinearMaps, DomainRowCounter, MixtureOfExperts,
                      RandomTextVectors, js_penalty, mmd_penalty)
from . import register_model
from .base import ZooModel
from .common import (EVAL_NEGATIVES, concat, domain_feature, domain_rows, functional_model, head, mlp,
                     pooled_sequence)

DIVERGENCES = ("js", "mmd", "none")
TEXT_MODES = ("llm", "random", "none")


@dataclass(frozen=True)
class SRFoundationConfig:
    # width of each entity's fused vector (AGF; the domain-mapped space is 3x): 128 on the valid splits (2 epochs
    # ml-latest-small-domains / 1 epoch amazon-search-multidomain, mean AUC over domains): 32 -> 128 gave 0.7649 ->
    # 0.7639 (ml) and rec 0.6772 -> 0.6947, search 0.9626 -> 0.9696 (amazon: 32-d cannot hold the 384-d text)
    units: int = 128
    gating: str = "domain"           # mean | cls | domain (cls: needs an `all-MiniLM-L6-v2/cls` text feature)
    text: str = "llm"                # llm | random (ablation: random vectors per text) | none (no text aspect)
    divergence: str = "js"           # js | mmd | none: the `divergence` auxiliary loss (weight in `losses:`)
    divergence_weight: float = 0.1   # its default weight
    mmd_bandwidth: float = 1.0
    num_experts: int = 4
    expert_units: tuple = (128, 64)
    tower_units: tuple = (64,)
    dropout: float = 0.0
    domain: str = ""                 # the domain feature ("" = the spec's only one)
    user_features: tuple = ()        # default: keys.user and every history (sequence)
    query_features: tuple = ()       # default: keys.query and its side features
    item_features: tuple = ()        # default: keys.item, its side features and every other input


class SRFoundation(ZooModel):
    """The functional network plus its divergence loss and the unseen-domain fill."""

    def __init__(self, inputs, outputs, *, spec, cfg: SRFoundationConfig, row_names: list[str], **kwargs):
        super().__init__(inputs, outputs, spec=spec, **kwargs)
        object.__setattr__(self, "sr_config", cfg)
        object.__setattr__(self, "row_names", row_names)      # domain row -> its value ("<oov>" for OOV rows)
        object.__setattr__(self, "num_domains", len(row_names))

    def auxiliary_losses(self, features, outputs, training):
        if not self.loss_weights.get("divergence"):
            return {}
        cfg = self.sr_config
        h, rows = outputs["aux/domain_space"], outputs["aux/domain_rows"]
        if cfg.divergence == "mmd":
            return {"divergence": mmd_penalty(h, rows, self.num_domains, cfg.mmd_bandwidth)}
        return {"divergence": js_penalty(h, rows, self.num_domains)}

    def fill_unseen_rows(self) -> dict:
        counter = self.get_layer("domain_row_counter")
        seen = counter.seen()
        unseen = [int(r) for r in np.flatnonzero(~seen)]
        if not unseen or not seen.any():
            return {}
        src = [int(r) for r in np.flatnonzero(seen)]
        table = self.get_layer(f"emb_{self.spec.table_of(self.domain_name)}").embeddings
        value = table.numpy()
        value[unseen] = value[src].mean(axis=0)
        table.assign(value)
        maps = self.get_layer("domain_maps")
        for row in unseen:
            maps.init_domain_from_mean(row, src)
        return {"domain rows no training example reached, set to the mean of the trained ones":
                [self.row_names[r] for r in unseen]}

    @property
    def domain_name(self) -> str:
        return domain_feature(self.spec, "sr_foundation", self.sr_config.domain or None).name


def _entities(spec, cfg: SRFoundationConfig, domain: str) -> dict[str, list[str]]:
    """{user|query|item: input feature names} (see the config's defaults); every input in at most one entity."""
    inputs = {f.name: f for f in spec.inputs if not (isinstance(f, SequenceFeature) and f.name == EVAL_NEGATIVES)}
    keys = spec.keys

    def given(names, key):
        bad = [n for n in names if n not in inputs or n == domain]
        if bad:
            raise ValueError(f"{spec.source}: params.{key}: {bad} are not input features of this spec (the domain "
                             f"feature is not an entity's); inputs: {sorted(set(inputs) - {domain})}")
        return list(names)

    def key(role):
        return [keys[role]] if keys.get(role) in inputs else []

    user = given(cfg.user_features, "user_features") if cfg.user_features else (
        key("user") + [n for n, f in inputs.items() if isinstance(f, SequenceFeature)])
    query = given(cfg.query_features, "query_features") if cfg.query_features else key("query")
    taken = set(user) | set(query) | {domain}
    item = given(cfg.item_features, "item_features") if cfg.item_features else [
        n for n in inputs if n not in taken]
    out = {"user": user, "query": query, "item": item}
    seen: dict[str, str] = {}
    for entity, names in out.items():
        for n in names:
            if n in seen:
                raise ValueError(f"{spec.source}: params: {n!r} is in both {seen[n]}_features and "
                                 f"{entity}_features; give each feature to one entity")
            seen[n] = entity
    return {k: v for k, v in out.items() if v}


def _is_cls(f) -> bool:
    return getattr(f, "encoder", None) in CLS_ENCODERS


def _aspects(spec, emb: FeatureEmbeddings, inputs: dict, names: list[str], cfg: SRFoundationConfig, entity: str):
    """(id, text, sparse, cls) tensors of one entity (None where it has none): three aspects and the [CLS] vector
    that [CLS]-gating reads (text features with a [CLS] encoder are gate inputs, not aspects)."""
    ids, texts, sparse, cls = [], [], [], []
    key_ids = {spec.keys.get(r) for r in ("user", "item", "query")}
    for name in names:
        f = spec[name]
        if isinstance(f, SequenceFeature):
            sparse += pooled_sequence(spec, emb, inputs, name).values()
            continue
        if f.kind in ("text", "vector"):
            if not _is_cls(f):
                texts.append(emb.feature(name, inputs))
            elif cfg.gating == "cls":           # read only when it gates: otherwise not a model input
                cls.append(emb.feature(name, inputs))
            continue
        vec = emb.feature(name, inputs)
        (ids if f.kind == "id" and name in key_ids else sparse).append(vec)
        if f.kind == "id" and name in key_ids:
            rows = emb.index(name, inputs)
            for side in spec.side_features(name):
                kind = "cls" if _is_cls(side) else "text" if side.kind in ("text", "vector") else "sparse"
                if kind != "cls" or cfg.gating == "cls":
                    {"cls": cls, "text": texts, "sparse": sparse}[kind].append(emb.side(side.name, rows))
    text = concat(texts, f"{entity}_text") if texts else None
    if text is not None and cfg.text == "random":
        text = at_level(RandomTextVectors(name=f"{entity}_random_text"), 0)(text)
    if cfg.text == "none":
        text = None
    return (concat(ids, f"{entity}_ids") if ids else None, text,
            concat(sparse, f"{entity}_sparse") if sparse else None, concat(cls, f"{entity}_cls") if cls else None)


@register_model("sr_foundation", SRFoundationConfig)
def sr_foundation(spec, artifacts, cfg: SRFoundationConfig):
    """S&R foundation: user/query/item aspects (id, LLM text, sparse) -> Aspect Gating Fusion -> per-domain linear
    maps -> MMoE -> towers, with a JS / MMD divergence between domains."""
    if cfg.gating not in ("mean", "cls", "domain"):
        raise ValueError(f"{spec.source}: params.gating: {cfg.gating!r} is not one of mean, cls, domain")
    if cfg.gating == "cls" and not any(_is_cls(f) for f in spec.features):
        raise ValueError(f"{spec.source}: params.gating=cls needs the text encoder's [CLS] token output as a feature: "
                         f"add e.g. `{{name: title_cls, kind: text, encoder: all-MiniLM-L6-v2/cls, side_of: ITEM, "
                         f"source: title}}` (computed once per text at build time), or use gating: mean or domain")
    if cfg.text not in TEXT_MODES or cfg.divergence not in DIVERGENCES:
        raise ValueError(f"{spec.source}: params.text must be one of {TEXT_MODES} and params.divergence one of "
                         f"{DIVERGENCES}; got {cfg.text!r}, {cfg.divergence!r}")
    dom = domain_feature(spec, "sr_foundation", cfg.domain or None, why="domain embeddings and maps")
    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts)
    rows, num_rows = domain_rows(spec, emb, inputs, dom)
    table = spec.table_config(spec.table_of(dom.name))
    if table.hash_buckets:
        raise ValueError(f"{spec.source}: sr_foundation needs a vocabulary for the domain feature {dom.name!r} "
                         "(per-domain maps are indexed by it); drop its hash_buckets")
    oov = table.vocab.oov_buckets
    row_names = [f"<oov{i}>" for i in range(oov)] + [str(v) for v in artifacts.vocabs[spec.table_of(dom.name)]]
    if cfg.divergence != "none" and num_rows - oov < 2:
        raise ValueError(f"{spec.source}: params.divergence={cfg.divergence} compares domains, but the domain "
                         f"feature {dom.name!r} has {num_rows - oov} value(s) in the training vocabulary; set "
                         "divergence: none")
    rows = DomainRowCounter(num_rows, name="domain_row_counter")(rows)
    e_dom = emb.id(dom.name, inputs)

    fused = []
    for entity, names in _entities(spec, cfg, dom.name).items():
        ids, text, sparse, cls = _aspects(spec, emb, inputs, names, cfg, entity)
        aspects = [a for a in (ids, text, sparse) if a is not None]
        if not aspects:
            continue
        gate_text = cls if cfg.gating == "cls" else text if cfg.gating == "mean" else None
        if cfg.gating == "domain":
            agf, gate = AspectGatingFusion("domain", units=cfg.units, name=f"agf_{entity}"), [e_dom]
        elif gate_text is not None:   # [CLS] token output, or the pooled (mean-of-tokens) text: a text gate vector
            agf, gate = AspectGatingFusion("cls", units=cfg.units, name=f"agf_{entity}"), [gate_text]
        else:                         # an entity without that text: the mean of its aspects
            agf, gate = AspectGatingFusion("mean", units=cfg.units, name=f"agf_{entity}"), []
        fused.append(at_level(agf, 1)([*aspects, *gate]))
    x = concat(fused, "entities")
    h = at_level(DomainLinearMaps(num_rows, units=cfg.units * len(fused), name="domain_maps"), 1)([x, rows])
    labels = spec.labels
    task_inputs = MixtureOfExperts(cfg.num_experts, cfg.expert_units, len(labels), cfg.dropout,
                                   name="mmoe")(concat([h, e_dom], "domain_space_and_embedding"))
    outputs, logits = {}, {}
    for lab, t in zip(labels, task_inputs):    # tower then head per task: the order layers draw their init
        tower = mlp(t, cfg.tower_units, dropout=cfg.dropout, name=f"tower_{lab.task}")
        outputs[lab.task], logits[lab.task] = head(lab, tower)
    aux = {"aux/domain_space": h, "aux/domain_rows": rows} if cfg.divergence != "none" else None
    weights = {"divergence": cfg.divergence_weight} if cfg.divergence != "none" else None
    return functional_model(inputs, outputs, "sr_foundation", spec, cls=SRFoundation, cfg=cfg, row_names=row_names,
                            logits=logits, aux_outputs=aux, aux_loss_weights=weights)
