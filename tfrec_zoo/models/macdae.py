"""MACDAE (Ding et al., KDD 2019): implicit contexts from a mixture attentional constrained denoising autoencoder,
pretrained without labels, then the encoder inside Wide&Deep; the multi-head DAE / VAE baselines; Wide&Deep.

The input x (the author's `construct_input`, generalised from Yelp's five embeddings to a feature spec): every
embedded input field of the spec [e_1 .. e_F] (user, item, the item's `side_of` attributes, each history field
mean-pooled: the user's items = the author's e_ui, a users-of-the-item sequence = e_iu, and the explicit contexts),
each projected to `embedding_dim` when its table is another width; their pairwise products
p = 0.5 / #pairs * sum_{a<b} e_a * e_b (the author's 0.5 * 1/10 over 5 embeddings); the normalised dense features:

    x = [e_1 || ... || e_F || p || dense]

Deviations [choice], each a param so the author's form is one YAML line away:
- the explicit contexts (hour, weekday, location cell, distance) are fields of x (the issue asks for them; the
  author's Yelp input has none);
- `target_gradient: false`: the reconstruction target is stop_gradient(x). The author's target is x itself, whose
  embeddings then shrink to make x easy to reconstruct (a zero x reconstructs perfectly through the zero-initialised
  decoder); `target_gradient: true` is the author's form;
- the constraint is the author's linear penalty; `hinge: true` makes epsilon matter (see head_diversity_loss).

Registry: pretraining `macdae` (K = 4 heads, attention, constraint 0.005), `multihead_dae` (no attention, no
constraint), `multihead_vae` (per-head Gaussian, KL); downstream `wide_deep` (the base: deep input = the embedded
fields + dense, no encoder), `wide_deep_macdae` / `wide_deep_dae` / `wide_deep_vae` (deep input = z, the encoder
in-graph without input noise, the author's keep_prob 1.0). The encoder's layers have the same names in every model
(`macdae_proj_*`, `macdae_encoder`, `macdae_decoder`, `emb_*`), so `pretrain: {model: macdae, include: ['^emb_',
'^macdae_']}` restores them by name; fine-tuned end-to-end (the author's `if_freeze = False`) or frozen
(`freeze: ['^macdae_encoder$']`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .._tf import keras, tf
from ..features.spec import FeatureSpec, SequenceFeature
from ..inputs import FeatureEmbeddings, at_level, build_inputs
from ..layers.autoencoder import (MixtureHeadsEncoder, PairwiseProducts, gaussian_kl, head_diversity_loss,
                                  reconstruction_loss)
from . import register_model
from .base import ZooModel
from .common import EVAL_NEGATIVES, concat, functional_model, head, pooled_sequence

ENCODERS = ("none", "macdae", "dae", "vae")


@dataclass(frozen=True)
class MACDAEConfig:
    fields: tuple = ()                  # input features of x (a sequence name = its id fields pooled); () = all
    embedding_dim: int = 16             # one width for every embedded field (pairwise products need one)
    heads: int = 4                      # K implicit-context components
    units: int = 256                    # width of z (each head units / K)
    input_dropout: float = 0.05         # denoising noise (the author's keep_prob 0.95)
    attention: bool = True
    variational: bool = False
    constraint: bool = True             # the heads' diversity constraint is on by default (weight 0.005)
    epsilon: float = 0.75               # the constraint's cosine bound (the author's training script)
    hinge: bool = False
    target_gradient: bool = False
    seed: int = 0


@dataclass(frozen=True)
class MultiheadDAEConfig(MACDAEConfig):
    attention: bool = False
    constraint: bool = False            # the baseline: plain heads, no diversity constraint


@dataclass(frozen=True)
class MultiheadVAEConfig(MACDAEConfig):
    attention: bool = False
    variational: bool = True
    input_dropout: float = 0.0          # the author's VAE has no input noise


@dataclass(frozen=True)
class WideDeepConfig(MACDAEConfig):
    encoder: str = "none"               # none (base Wide&Deep) | macdae | dae | vae
    deep_input: str = "z"               # z (the author's) | z_and_fields
    dnn_units: tuple = (256,)
    l2_deep: float = 0.0                # the author's deep tower: L2 0.1 (TF1 l2_regularizer: 0.1 * sum(w^2) / 2)
    wide: bool = True
    input_dropout: float = 0.0          # the encoder downstream: no noise (the author's keep_prob 1.0)


@dataclass(frozen=True)
class WideDeepMACDAEConfig(WideDeepConfig):
    encoder: str = "macdae"


@dataclass(frozen=True)
class WideDeepDAEConfig(WideDeepConfig):
    encoder: str = "dae"
    attention: bool = False
    constraint: bool = False


@dataclass(frozen=True)
class WideDeepVAEConfig(WideDeepConfig):
    encoder: str = "vae"
    attention: bool = False
    variational: bool = True


def _check(cfg: MACDAEConfig, who: str) -> None:
    def bad(field, msg):
        raise ValueError(f"{who}.{field}: {msg}")

    if cfg.heads < 1:
        bad("heads", f"must be >= 1, got {cfg.heads}")
    if cfg.units < cfg.heads or cfg.units % cfg.heads:
        bad("units", f"must be a multiple of heads ({cfg.heads}), got {cfg.units}")
    if not -1.0 <= cfg.epsilon <= 1.0:
        bad("epsilon", f"a cosine bound in [-1, 1], got {cfg.epsilon}")
    if not 0.0 <= cfg.input_dropout < 1.0:
        bad("input_dropout", f"must be in [0, 1), got {cfg.input_dropout}")
    if cfg.embedding_dim < 1:
        bad("embedding_dim", f"must be >= 1, got {cfg.embedding_dim}")
    if isinstance(cfg, WideDeepConfig):
        if cfg.encoder not in ENCODERS:
            bad("encoder", f"one of {', '.join(ENCODERS)}, got {cfg.encoder!r}")
        if cfg.deep_input not in ("z", "z_and_fields"):
            bad("deep_input", f"z or z_and_fields, got {cfg.deep_input!r}")


# -- the input x ---------------------------------------------------------------------------------------------------
def _field_names(spec: FeatureSpec, cfg: MACDAEConfig, who: str) -> list[str]:
    names = [f.name for f in spec.inputs if f.name != EVAL_NEGATIVES]
    if not cfg.fields:
        return names
    unknown = [n for n in cfg.fields if n not in names]
    if unknown:
        raise ValueError(f"{who}.fields: {unknown[0]!r} is not an input of {spec.source} (inputs: {', '.join(names)})")
    return list(cfg.fields)


def embedded_fields(spec: FeatureSpec, emb: FeatureEmbeddings, inputs: dict, names: list[str]) -> tuple[dict, dict]:
    """({field: [B, d_f]} embedded categorical fields, pooled sequence id fields and the item's categorical
    `side_of` attributes; {field: [B, w]} dense / vector fields)."""
    embedded, dense = {}, {}
    for name in names:
        f = spec[name]
        if isinstance(f, SequenceFeature):
            embedded.update(pooled_sequence(spec, emb, inputs, name))
        elif f.kind in ("dense", "vector", "text"):
            dense[name] = emb.feature(name, inputs)
        else:
            embedded[name] = emb.feature(name, inputs)
    item = spec.keys.get("item")
    if item and item in embedded:
        for attr in spec.side_features(item):
            if attr.kind in ("id", "multi_hot"):
                embedded[f"{item}.{attr.name}"] = emb.side(attr.name, emb.index(item, inputs))
    return embedded, dense


def implicit_context_input(spec: FeatureSpec, emb: FeatureEmbeddings, inputs: dict, cfg: MACDAEConfig,
                           who: str) -> tuple:
    """(x [B, D], the embedded fields {name: [B, d_f]} before projection, the dense fields)."""
    embedded, dense = embedded_fields(spec, emb, inputs, _field_names(spec, cfg, who))
    if not embedded:
        raise ValueError(f"{who}.fields: no categorical field of {spec.source} among them (x needs embeddings)")
    parts = []
    for name, t in embedded.items():
        if t.shape[-1] != cfg.embedding_dim:
            t = at_level(keras.layers.Dense(cfg.embedding_dim, use_bias=False,
                                            name=f"macdae_proj_{name.replace('.', '_')}"), 1)(t)
        parts.append(t)
    rows = [keras.layers.Reshape((1, cfg.embedding_dim), name=f"macdae_field{i}")(t) for i, t in enumerate(parts)]
    stacked = keras.layers.Concatenate(axis=1, name="macdae_fields")(rows) if len(rows) > 1 else rows[0]
    pairwise = PairwiseProducts(name="macdae_pairwise")(stacked)
    x = concat([*parts, pairwise, *dense.values()], "macdae_x")
    return x, embedded, dense


def _encode(x, cfg: MACDAEConfig):
    encoder = MixtureHeadsEncoder(cfg.heads, cfg.units, cfg.input_dropout, attention=cfg.attention,
                                  variational=cfg.variational, seed=cfg.seed, name="macdae_encoder")
    enc = encoder(x)
    decoder = keras.layers.Dense(int(x.shape[-1]), kernel_initializer="zeros", name="macdae_decoder")
    aux = {"x": x, "x_hat": decoder(enc["z"]), "heads": enc["heads"]}
    if cfg.variational:
        aux.update(mean=enc["mean"], log_var=enc["log_var"])
    return enc, aux


class AutoencoderLosses:
    """The losses every MACDAE-family model declares: reconstruction, head-diversity constraint, KL (VAE)."""

    def _autoencoder_losses(self, outputs: dict) -> dict:
        cfg = self.config_for_losses
        out = {}
        x = outputs["x"] if cfg.target_gradient else tf.stop_gradient(outputs["x"])
        if self.loss_weights.get("reconstruction"):
            out["reconstruction"] = reconstruction_loss(x, outputs["x_hat"])
        if self.loss_weights.get("constraint"):
            out["constraint"] = head_diversity_loss(outputs["heads"], cfg.epsilon, cfg.hinge)
        if self.loss_weights.get("kl") and "mean" in outputs:
            out["kl"] = gaussian_kl(outputs["mean"], outputs["log_var"])
        return out


def _loss_defaults(cfg: MACDAEConfig, pretraining: bool) -> dict[str, float]:
    on = 1.0 if pretraining else 0.0
    weights = {"reconstruction": on}
    if cfg.heads > 1 and not cfg.variational:
        # declared either way (a YAML may switch it on for the DAE); MACDAE's default weight is the author's lambda
        weights["constraint"] = 0.005 * on if cfg.constraint else 0.0
    if cfg.variational:
        weights["kl"] = on
    return weights


class MACDAEPretrainModel(AutoencoderLosses, ZooModel):
    """The autoencoder alone, trained without labels (its losses only); output: the implicit context z."""

    def __init__(self, *args, cfg: MACDAEConfig, **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "config_for_losses", cfg)

    def evaluation_protocol(self, spec: FeatureSpec) -> str:
        return "losses"

    def auxiliary_losses(self, features, outputs, training):
        return self._autoencoder_losses(outputs)


def _pretraining(name: str):
    def build(spec, artifacts, cfg: MACDAEConfig):
        _check(cfg, name)
        inputs = build_inputs(spec)
        emb = FeatureEmbeddings(spec, artifacts)
        x, _, _ = implicit_context_input(spec, emb, inputs, cfg, name)
        enc, aux = _encode(x, cfg)
        # named layers: a SavedModel signature names its outputs by the layer that made them
        outputs = {key: keras.layers.Activation("linear", name=key)(enc[part])
                   for key, part in (("implicit_context", "z"), ("head_attention", "attention"))}
        return functional_model(inputs, outputs, name, spec, cls=MACDAEPretrainModel, cfg=cfg, tasks={},
                                aux_outputs=aux, aux_loss_weights=_loss_defaults(cfg, pretraining=True))
    build.__doc__ = {"macdae": "MACDAE pretraining: K attended softplus heads, constraint, zero-init decoder.",
                     "multihead_dae": "Multi-head denoising autoencoder pretraining (no attention, no constraint).",
                     "multihead_vae": "Multi-head variational autoencoder pretraining (per-head Gaussian, KL)."}[name]
    return build


for _name, _cls in (("macdae", MACDAEConfig), ("multihead_dae", MultiheadDAEConfig),
                    ("multihead_vae", MultiheadVAEConfig)):
    register_model(_name, _cls)(_pretraining(_name))


# -- downstream: Wide&Deep (+ an encoder) ----------------------------------------------------------------------------
def wide_logit(spec: FeatureSpec, emb: FeatureEmbeddings, inputs: dict):
    """The wide part: the sum of one learned weight per id of every scalar categorical input ([B, 1]), or None."""
    terms = []
    for f in spec.inputs:
        if f.kind in ("id", "domain"):
            table = spec.table_of(f.name)
            weights = at_level(keras.layers.Embedding(
                emb.artifacts.vocab_size(spec, table), 1, embeddings_initializer="zeros", name=f"wide_{f.name}"), 0)
            terms.append(weights(emb.lookup(table)(inputs[f.name])))
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else keras.layers.Add(name="wide")(terms)


class WideAndDeepModel(AutoencoderLosses, ZooModel):
    """Wide&Deep; with an encoder its autoencoder losses are there too (weight 0 unless the YAML sets one)."""

    def __init__(self, *args, cfg: WideDeepConfig, **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "config_for_losses", cfg)

    def auxiliary_losses(self, features, outputs, training):
        return self._autoencoder_losses(outputs) if "x" in outputs else {}


def _wide_deep(name: str):
    def build(spec, artifacts, cfg: WideDeepConfig):
        _check(cfg, name)
        inputs = build_inputs(spec)
        reg = keras.regularizers.l2(cfg.l2_deep / 2) if cfg.l2_deep else None
        emb = FeatureEmbeddings(spec, artifacts)
        aux, aux_weights = None, {}
        if cfg.encoder == "none":
            embedded, dense = embedded_fields(spec, emb, inputs, _field_names(spec, cfg, name))
            deep = concat([*embedded.values(), *dense.values()], "deep_input")
        else:
            x, embedded, dense = implicit_context_input(spec, emb, inputs, cfg, name)
            enc, aux = _encode(x, cfg)
            aux_weights = _loss_defaults(cfg, pretraining=False)
            deep = enc["z"] if cfg.deep_input == "z" else concat([enc["z"], *embedded.values(), *dense.values()],
                                                                   "deep_input")
        for i, u in enumerate(cfg.dnn_units):
            deep = keras.layers.Dense(u, activation="relu", kernel_regularizer=reg, name=f"deep_dense{i}")(deep)
        wide = wide_logit(spec, emb, inputs) if cfg.wide else None
        outputs, logits = {}, {}
        for lab in spec.labels:
            outputs[lab.task], logits[lab.task] = head(lab, deep, extra_logit=wide)
        return functional_model(inputs, outputs, name, spec, cls=WideAndDeepModel, cfg=cfg, logits=logits,
                                aux_outputs=aux, aux_loss_weights=aux_weights)
    build.__doc__ = {"wide_deep": "Wide&Deep (Cheng et al. 2016): per-id wide weights + an MLP over the fields.",
                     "wide_deep_macdae": "Wide&Deep + MACDAE: the deep tower reads the implicit context z.",
                     "wide_deep_dae": "Wide&Deep + a multi-head DAE encoder (baseline of MACDAE).",
                     "wide_deep_vae": "Wide&Deep + a multi-head VAE encoder (baseline of MACDAE)."}[name]
    return build


for _name, _cls in (("wide_deep", WideDeepConfig), ("wide_deep_macdae", WideDeepMACDAEConfig),
                    ("wide_deep_dae", WideDeepDAEConfig), ("wide_deep_vae", WideDeepVAEConfig)):
    register_model(_name, _cls)(_wide_deep(_name))

__all__ = ["MACDAEConfig", "WideDeepConfig", "implicit_context_input", "wide_logit"]
