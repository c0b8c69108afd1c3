"""SEMINAR (Shen et al., arXiv 2407.10714) and the lifelong-sequence baselines it is compared with.

Every model here reads one lifelong sequence of (query, item) pairs and the target pair; they differ in how the
general search unit (GSU) picks K of the L history steps for the exact search unit (ESU):

    seminar       multi-modal items (id + every `side_of` feature of the item: attributes, title text) fused by a
                  global gate, query-item pairs, TWIN-style per-head top-K + ESU, PSU pretraining (seminar_psu)
    twin          the same GSU/ESU over id-only items (Chang et al. 2023: per-head consistent GSU and ESU)
    sim           top-K by inner product in the embedding space, shared by the heads (SIM soft search)
    eta           top-K by SimHash Hamming matches of the fused vectors (ETA, 16 bits)
    qin           top-K1 by query relevance, then top-K2 by item relevance among them (QIN)
    lifelong_din  DIN's target attention over the whole sequence (exact, no GSU)

Shared structure (digest §1.4): item_l = gate(id_l, attrs_l, text_l) (each modality projected to `dim`),
query_l = gate(query id, query text) (zero when empty), x_l = alpha * query_l + (1 - alpha) * item_l, the target pair
t the same way; then ESU(t, GSU(x)) -> MLP([esu, t]) -> one head per task. Modality vectors come from the ids
through side tables (`FeatureEmbeddings.side`), so a history step is just (item id, query id).

Deviations from the official code (digest §1.4-1.5): the per-head Q/K/V projections are trained (the code's plain
lists leave them at their random init); padded steps are masked before top-K; the relevance objective is a real
InfoNCE (the code's version pushes positives apart); text vectors are MiniLM (384-d), not CLIP.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._tf import keras, tf
from ..features.spec import FeatureSpec, MultiHotFeature, TextFeature, VectorFeature
from ..inputs import FeatureEmbeddings, build_inputs
from ..layers import TargetAttention
from ..layers.lifelong import (
    GSUScores, ModalityTables, MultiHeadTargetAttention, NonEmpty, PairFusion, QueryDropout,
)
from . import register_model
from .base import ZooModel
from .common import concat, functional_model, heads, mlp, target_and_history

GSU_KINDS = ("seminar", "twin", "sim", "eta", "qin", "din", "exact")
SHARED_CONTEXT_GSUS = ("seminar", "twin", "exact")        # MultiHeadTargetAttention alone: broadcasts a [1, L] history


@dataclass(frozen=True)
class LifelongConfig:
    gsu: str = "seminar"                # see GSU_KINDS; "exact" = per-head attention over the whole sequence
    modalities: tuple = ()              # item modalities: "id" and side feature names; () = id + every side feature
    use_query: bool = True              # fuse each item with its query (False: items only)
    dim: int = 64                       # D of the fused space (digest: hidden_size 64)
    heads: int = 4
    top_k: int = 50                     # K retrieved per head (digest: 50 on Amazon with L = 100)
    qin_first_k: int = 80               # QIN's first-stage K1
    eta_bits: int = 16
    alpha: float = 0.5                  # query weight of the pair fusion
    # training only: empty the target pair's query with this probability, so the model also learns to rank
    # without a search intent ("recommendation" mode empties it at evaluation)
    query_dropout: float = 0.5
    modality_projection: bool = True    # fine-tuning's per-modality D x D projections G (identity init)
    # keep restored weights fixed while fine-tuning (the official code's freeze_psu_projection /
    # freeze_multi_modal_projection); embeddings are frozen by name in the experiment (`freeze: ['^emb_']`)
    freeze_modality_projection: bool = False
    freeze_input_projection: bool = False
    dnn_units: tuple = (128, 64)
    dropout: float = 0.0
    # approximate GSU for serving (seminar / twin): > 0 scores steps by product-quantisation codes with this many
    # sub-spaces x pq_codewords. The codebooks and codes come from a trained model: `with_pq_gsu(model, ...)`
    pq_subspaces: int = 0
    pq_codewords: int = 256
    # serving: modality tables read from copies filled once (`with_serving_tables`), not recomputed per request
    serving_tables: bool = False
    # PSU pretraining (model `seminar_psu`): loss = next * BCE + align * L_align + relevance * L_qi
    next_weight: float = 1.0
    align_weight: float = 0.1           # the Amazon script's loss_multimodal_align_weight
    relevance_weight: float = 1.0
    temperature: float = 0.05
    aux_steps: int = 1024               # at most this many distinct history steps per batch in the contrastive losses


def _config(**defaults):
    return dataclass(frozen=True)(type("Config", (LifelongConfig,), {
        "__annotations__": {k: type(v) for k, v in defaults.items()}, **defaults}))


TwinConfig = _config(gsu="twin", modalities=("id",), modality_projection=False)
SimConfig = _config(gsu="sim", modalities=("id",), modality_projection=False)
EtaConfig = _config(gsu="eta", modalities=("id",), modality_projection=False)
QinConfig = _config(gsu="qin", modalities=("id",), modality_projection=False)
LifelongDinConfig = _config(gsu="din", modalities=("id",), modality_projection=False)


class _Parts:
    """The embedding side of a lifelong model: modality tables of items and queries (ModalityTables), fused."""

    def __init__(self, spec: FeatureSpec, artifacts, cfg: LifelongConfig):
        if cfg.gsu not in GSU_KINDS:
            raise ValueError(f"lifelong model: gsu must be one of {GSU_KINDS}, got {cfg.gsu!r}")
        self.spec, self.artifacts, self.cfg = spec, artifacts, cfg
        self.emb = FeatureEmbeddings(spec, artifacts)
        self.target, self.history, self.hist_item = target_and_history(spec, None, None)
        sides = [f.name for f in spec.side_features(self.target)]
        self.modalities = list(cfg.modalities) or ["id"] + sides
        bad = [m for m in self.modalities if m != "id" and m not in sides]
        if bad:
            raise ValueError(f"{spec.source}: modalities {bad} are not side features of {self.target!r} ({sides})")
        self.query = self.hist_query = None
        if cfg.use_query or cfg.gsu == "qin":
            self.query = spec.keys.get("query")
            if not self.query:
                raise ValueError(f"{spec.source}: set `keys: {{query: ...}}` (the target pair's query id) or "
                                 "`use_query: false`")
            qtable = spec.table_of(self.query)
            fields = [sf.name for sf in spec[self.history].fields if sf.kind == "id"
                      and spec.table_of(sf.name) == qtable]
            if not fields:
                raise ValueError(f"{spec.source}: no field of {self.history!r} shares {self.query!r}'s table")
            self.hist_query = fields[0]

    def tables(self, owner: str, modalities: list[str], name: str) -> ModalityTables:
        """A ModalityTables layer over `owner`'s vocabulary rows (its id embedding built here, so its variable keeps
        the zoo's `emb_<table>/embeddings` name for restore-by-name)."""
        spec, art = self.spec, self.artifacts
        table = spec.table_of(owner)
        specs, frozen, attrs = [], {}, {}
        id_emb = None
        for m in modalities:
            if m == "id":
                id_emb = _built(self.emb.table(table))
                specs.append(("id", None))
                continue
            f = spec[m]
            if isinstance(f, MultiHotFeature):
                attrs[m] = _built(self.emb.table(spec.table_of(m)))
                frozen[m], frozen[m + "_len"] = art.side[f"{owner}/{m}"], art.side[f"{owner}/{m}_len"]
                specs.append(("multi_hot", m))
            elif isinstance(f, (TextFeature, VectorFeature)):
                frozen[m] = art.side[f"{owner}/{m}"]
                specs.append(("dense", m))
            else:
                raise ValueError(f"{spec.source}: side feature {m!r} ({f.kind}) is not a supported modality "
                                 "(text, vector, multi_hot)")
        parts = [p for p, on in (("gproj", self.cfg.freeze_modality_projection),
                                 ("proj", self.cfg.freeze_input_projection)) if on]
        return ModalityTables(specs, self.cfg.dim, self.cfg.modality_projection, id_emb, frozen, attrs,
                              art.vocab_size(spec, table), frozen_parts=parts, cached=self.cfg.serving_tables,
                              name=name)


def _built(embedding):
    """The Embedding layer, built through a call (so its variable is named `<layer>/embeddings`)."""
    if not embedding.built:
        embedding(tf.zeros([1], tf.int32))
    return embedding


def lifelong_network(spec: FeatureSpec, artifacts, cfg: LifelongConfig):
    """(inputs, {task: output}, aux tensors for the PSU objectives)."""
    parts = _Parts(spec, artifacts, cfg)
    emb = parts.emb
    inputs = build_inputs(spec)
    mask = emb.mask(parts.history, inputs)
    items = parts.tables(parts.target, parts.modalities, "item_modalities")
    step_rows, target_rows = emb.index(parts.hist_item, inputs), emb.index(parts.target, inputs)
    item_s, item_t, *step_mods = items([step_rows, target_rows])
    aux = {"mask": mask, "step_rows": step_rows, "step_item": item_s,
           **{f"step_{m}": v for m, v in zip(parts.modalities, step_mods)}}
    if parts.query:
        qside = [f.name for f in spec.side_features(parts.query)]
        queries = parts.tables(parts.query, ["id"] + qside, "query_modalities")
        q_rows_s, q_rows_t = emb.index(parts.hist_query, inputs), emb.index(parts.query, inputs)
        q_s, q_t = queries([q_rows_s, q_rows_t])[:2]
        q_present_s = NonEmpty(name="present_step_query")(inputs[parts.hist_query])
        q_present_t = NonEmpty(name="present_query")(inputs[parts.query])
        if cfg.query_dropout:
            q_present_t = QueryDropout(cfg.query_dropout, name="query_dropout")(q_present_t)
        q_s = keras.layers.Multiply(name="masked_step_query")([q_s, q_present_s[..., None]])
        q_t = keras.layers.Multiply(name="masked_query")([q_t, q_present_t[..., None]])
        aux.update(step_query=q_s, step_query_present=q_present_s, step_query_rows=q_rows_s)
    if cfg.use_query:
        fusion = PairFusion(cfg.alpha, name="pair_fusion")
        t, steps = fusion([q_t, item_t]), fusion([q_s, item_s])
    else:
        t, steps = item_t, item_s
    if cfg.gsu == "din":
        esu = TargetAttention((80, 40), "sigmoid", "softmax", name="din_attention")([t, steps, mask])
    else:
        args = [t, steps, mask]
        if cfg.gsu in ("sim", "eta"):
            args.append(GSUScores(cfg.gsu, bits=cfg.eta_bits, name="gsu_scores")([t, steps, mask]))
        elif cfg.gsu == "qin":
            args.append(GSUScores("qin", first_k=cfg.qin_first_k, name="gsu_scores")([q_t, q_s, item_t, item_s,
                                                                                        mask]))
        top_k = 0 if cfg.gsu == "exact" else cfg.top_k
        pq = None
        if cfg.pq_subspaces:
            if cfg.gsu not in ("seminar", "twin"):
                raise ValueError(f"pq_subspaces: the PQ GSU approximates the per-head scores of seminar / twin, "
                                 f"not gsu={cfg.gsu!r}")
            if cfg.dim % cfg.pq_subspaces:
                raise ValueError(f"pq_subspaces={cfg.pq_subspaces} must divide dim={cfg.dim}")
            m = 2 if cfg.use_query else 1
            pq = {"codebook_shape": [m, cfg.pq_subspaces, cfg.pq_codewords, cfg.dim // cfg.pq_subspaces],
                  "item_rows": artifacts.vocab_size(spec, spec.table_of(parts.target)),
                  "query_rows": artifacts.vocab_size(spec, spec.table_of(parts.query)) if cfg.use_query else 0,
                  "alpha": cfg.alpha if cfg.use_query else 0.0}
            args += [step_rows] + ([q_rows_s, q_present_s] if cfg.use_query else [])
        esu = MultiHeadTargetAttention(cfg.heads, top_k, pq=pq, name="esu")(args)
    hidden = mlp(concat([esu, t], "tower_concat"), cfg.dnn_units, dropout=cfg.dropout, name="dnn")
    outputs, logits = heads(spec.labels, hidden)
    return inputs, outputs, logits, aux


class LifelongModel(ZooModel):
    """A lifelong-sequence model. Export options: `gsu` ("auto" = the PQ GSU where the model has per-head scores
    to approximate (seminar, twin), "pq", "exact") and `pq_subspaces`; every export stores the modality tables
    computed once (`with_serving_tables`)."""

    export_options = {**ZooModel.export_options, "gsu": "auto", "pq_subspaces": 16}

    def for_export(self, options: dict, artifacts):
        super().for_export(options, artifacts)           # rejects options it does not know
        opts = {**self.export_options, **options}       # raw_text is the exporter's (ServingModule)
        if opts["gsu"] not in ("auto", "exact", "pq"):
            raise ValueError(f"gsu must be auto, exact or pq, got {opts['gsu']!r}")
        pq_capable = self.config.gsu in PQ_GSUS
        if opts["gsu"] == "pq" and not pq_capable:
            raise ValueError(f"--gsu pq approximates the per-head GSU of {'/'.join(PQ_GSUS)}, not gsu="
                             f"{self.config.gsu!r}")
        reference = self
        if pq_capable and opts["gsu"] in ("auto", "pq"):
            reference, _ = with_pq_gsu(self, artifacts, subspaces=int(opts["pq_subspaces"]))
        return reference, with_serving_tables(reference, artifacts)

    def export_notes(self) -> list[str]:
        cfg = self.config
        notes = ["modality tables precomputed for serving"]
        if cfg.pq_subspaces:
            notes.insert(0, f"GSU: multi-modal PQ, {cfg.pq_subspaces} sub-spaces x {cfg.pq_codewords} codewords "
                            "(codes of every item and query)")
        return notes


def _build(spec, artifacts, cfg):
    inputs, outputs, logits, _ = lifelong_network(spec, artifacts, cfg)
    model = functional_model(inputs, outputs, f"lifelong_{cfg.gsu}", spec, cls=LifelongModel, logits=logits)
    # every layer between the request-level inputs (history, query) and the output broadcasts a batch of one
    # against B candidates: the rank signature feeds the context once (tfrec_zoo.serving.export)
    object.__setattr__(model, "broadcasts_context", cfg.gsu in SHARED_CONTEXT_GSUS)
    return model


_DOCS = {
    "seminar": ("seminar", LifelongConfig, "SEMINAR: multi-modal query-item pairs, per-head top-K GSU + ESU (fine-tune)"),
    "twin": ("twin", TwinConfig, "TWIN: per-head consistent top-K GSU and ESU over id-only query-item pairs"),
    "sim": ("sim", SimConfig, "SIM (soft search): top-K by embedding inner product, then multi-head ESU"),
    "eta": ("eta", EtaConfig, "ETA: top-K by SimHash Hamming matches, then multi-head ESU"),
    "qin": ("qin", QinConfig, "QIN: top-K1 by query relevance, top-K2 by item relevance, then multi-head ESU"),
    "lifelong_din": ("lifelong_din", LifelongDinConfig, "DIN over the whole query-item sequence (exact attention)"),
}


def _register(name: str, cfg_cls: type, doc: str) -> None:
    def build(spec, artifacts, cfg):
        return _build(spec, artifacts, cfg)

    build.__doc__ = doc
    register_model(name, cfg_cls)(build)


for _name, _cls, _doc in _DOCS.values():
    _register(_name, _cls, _doc)

# the GSUs `with_pq_gsu` can replace by the PQ one (per-head scores to approximate)
PQ_GSUS = ("seminar", "twin")
# the models that need a lifelong spec (keys.item + keys.query, a history sharing both tables)
LIFELONG_MODELS = (*_DOCS, "seminar_psu")


def fused_tables(model, name: str) -> np.ndarray:
    """[V, D] fused vectors of every row of a trained model's ModalityTables layer ("item_modalities" /
    "query_modalities"): exactly what the model gathers for an id."""
    layer = model.get_layer(name)
    w = layer.gate_weights().numpy()
    return sum(w[m] * t.numpy() for m, t in enumerate(layer.tables())).astype(np.float32)


def with_pq_gsu(model, artifacts, *, subspaces: int = 16, codewords: int = 256, seed: int = 0):
    """The trained seminar / twin `model` with its GSU replaced by the multi-modal PQ one: codebooks trained by
    k-means on the model's item (and query) tables, every id's codes precomputed, every other weight copied by name.
    Returns (pq_model, {"codebooks", "item_codes", "query_codes"}).
    """
    from ..layers.quantization import pq_encode, train_pq_codebooks

    cfg = model.config
    items = fused_tables(model, "item_modalities")
    books = [train_pq_codebooks(items, subspaces, codewords, seed=seed)]
    codes = {"item_codes": pq_encode(items, books[0]), "query_codes": None}
    if cfg.use_query:
        queries = fused_tables(model, "query_modalities")
        books.append(train_pq_codebooks(queries, subspaces, codewords, seed=seed + 1))
        codes["query_codes"] = pq_encode(queries, books[1])
    codebooks = np.stack(books)
    pq_model = _rebuilt(model, artifacts, pq_subspaces=subspaces, pq_codewords=codewords)
    pq_model.get_layer("esu").set_pq(codebooks, codes["item_codes"], codes["query_codes"])
    return pq_model, {"codebooks": codebooks, **codes}


def with_serving_tables(model, artifacts):
    """The trained lifelong `model` with its modality tables computed once and stored
    (`ModalityTables(cached=True)`), for export: same outputs, no per-request table computation."""
    served = _rebuilt(model, artifacts, serving_tables=True)
    for layer in served.layers:
        if isinstance(layer, ModalityTables):
            layer.fill_cache()
    return served


def _rebuilt(model, artifacts, **overrides):
    """`model` built again with `overrides` and every variable `model` has (by name) copied in."""
    from . import rebuild

    new = rebuild(model, artifacts, **overrides)
    source = {v.name: v for v in model.variables}
    for v in new.variables:
        if v.name in source:
            v.assign(source[v.name])
    return new
