"""Multi-interest candidate generation (seed paper 3, Li et al., CIKM 2022) and its baselines MIND, ComiRec-SA and
ComiRec-DR: a user tower with up to K_max interest vectors, an item tower, one embedding space.

    model = build_model("adaptive_interests_pcl", spec, artifacts, {"max_interests": 4, "prototypes": 64})
    out = model.query_model(features)        # {"interests": [B, K_max, d] unit vectors, "mask": [B, K_max] 0/1}
    ids, vectors = item_embeddings(model, artifacts)       # the item tower over the vocabulary (tfrec_zoo.retrieval)

User tower. The history's item ids go through the item tower's own embedding and projection (one space for
history steps, interests and candidates, as ComiRec), then an extractor gives K_max interests:
  * `extractor: self_attentive` (ComiRec-SA): attention over H (+ learned recency-position embeddings in the
    logits, `positions`), K read-outs of H;
  * `extractor: capsule`: dynamic routing, one shared map (`capsule_maps: shared`, MIND) or one per interest
    (`per_interest`, ComiRec-DR).
Optional `profile_features` (non-sequence features of the user: MIND's profile) are concatenated to every interest
before `interest_units` ReLU layers and a linear map back to `output_dim`. Interests and items are L2-normalised
(`normalize`): scores are cosines, divided by `temperature` in training.

Adaptive Interest Selection (`adaptive: true`, [inferred], tfrec_zoo/layers/multi_interest.py): the activeness
features [log(1 + history length), *activeness_features] -> an MLP -> logits of k in 1..K_max -> a mask over the
interest slots (Gumbel-max + straight-through in training, argmax at serving). `adaptive: false` gives every user
K_max interests (the fixed-K ablations and the baselines). Two optional losses (weight 0 by default): `interest_count`
charges the expected k / K_max (with the "positive" read-out an extra interest can only help, so nothing else keeps k
small); `all_interests` is the same softmax loss with every slot active, so that slots the selection seldom opens
still train (without it the selection settled on one k for every user in the runs of the card).

Training score (`readout`): "max" [inferred, the paper model]: every candidate is scored by the user's best active
interest, as serving ranks; "positive" (ComiRec and MIND training, MIND's label-aware attention at p -> inf): the
interest closest to the positive scores every candidate. The loss is the in-batch sampled softmax of the two-tower
(each positive row against the batch's other items, `remove_accidental_hits`, logQ correction) plus, with
`mixed_negatives: M`, M items drawn uniformly from the vocabulary per batch (mixed negative sampling, Yang et al.
WWW 2020); the logQ term is then log of each candidate's expected count under its sampler (B p_j in-batch, M / N
uniform), so the two samplers are corrected on one scale.

Prototypical contrastive learning (`prototypes: P > 0`, [inferred]): P prototypes in the item space, learned
(`prototype_update: learned`) or re-clustered with spherical k-means over every item vector at the start of each
epoch (`kmeans`; the platform calls `on_epoch_start` with the corpus). Loss `prototype` (weight beta, default 0.1,
`losses: {prototype: w}`): ProtoNCE of the batch's item vectors against their nearest prototype. Class collision
(`collision: mask`): an in-batch or mixed negative with the positive's prototype is removed from that row's softmax
(`none`: kept; the ablation).

Defined results for odd users: no history -> every interest is the zero vector (or, with profile features, a
function of the profile alone), every cosine is 0 and retrieval returns items in vocabulary order (most users of
no history should be served by the popularity fallback of the caller); k is then chosen from log(1) = 0 activeness.
Fewer behaviours than K_max: the K_max interests are read out of those few steps (some may coincide). An unknown
item id in the history maps to the OOV row. Nothing is NaN in any of these cases.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._tf import keras, tf
from ..features.spec import DenseFeature, FeatureSpec, SequenceFeature
from ..inputs import FeatureEmbeddings, at_level, build_inputs
from ..layers.multi_interest import (
    NEG,
    AdaptiveInterestSelection,
    CapsuleInterests,
    SelfAttentiveInterests,
    collision_mask,
    kmeans,
    mask_collisions,
    multi_interest_scores,
    nearest_prototype,
    prototype_contrastive_loss,
)
from . import register_model
from .base import ZooModel
from .common import concat, mlp, target_and_history, used_inputs
from .tasks import positive_row_weights
from .two_tower import relevance_outputs

__all__ = ["MultiInterestConfig", "MultiInterestModel"]

EXTRACTORS = ("self_attentive", "capsule")


@dataclass(frozen=True)
class MultiInterestConfig:
    history: str = ""                   # the behaviour sequence; default: the first sharing keys.item's table
    extractor: str = "self_attentive"   # self_attentive (ComiRec-SA) | capsule (MIND, ComiRec-DR)
    capsule_maps: str = "shared"        # capsule: shared (MIND) | per_interest (ComiRec-DR)
    routing_iterations: int = 3
    attention_units: int = 0            # self_attentive d_a; 0: 4 * output_dim
    positions: bool = True              # self_attentive: recency-position embeddings in the attention logits
    max_interests: int = 4
    adaptive: bool = True               # Adaptive Interest Selection; false: every user gets max_interests
    activeness_features: tuple = ()     # dense spec features besides log(1 + history length)
    selection_units: tuple = (32,)
    selection_temperature: float = 1.0
    selection_training: str = "gumbel"  # gumbel: a sampled k, straight-through mask | expected: E_k[loss], exact
    readout: str = "max"                # max (score = best active interest) | positive (the positive's interest)
    profile_features: tuple = ()        # non-sequence user features joined to every interest (MIND's profile)
    interest_units: tuple = ()          # ReLU layers after [interest, profile]
    item_units: tuple = ()              # item tower hidden layers over the id embedding
    output_dim: int = 64
    normalize: bool = True
    temperature: float = 0.05
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    mixed_negatives: int = 0            # uniform corpus negatives per batch on top of the in-batch ones
    prototypes: int = 0                 # P; 0: no prototype loss
    prototype_update: str = "learned"   # learned | kmeans (re-clustered at the start of every epoch)
    prototype_temperature: float = 0.1
    collision: str = "mask"             # mask: drop negatives sharing the positive's prototype | none
    label: str = ""                     # the task whose positive rows are positives; default: the first binary
    seed: int = 0                       # capsule routing's initial logits


def _check(cfg: MultiInterestConfig, spec: FeatureSpec, n_items: int, who: str) -> None:
    def bad(field, msg):
        raise ValueError(f"{who}.{field}: {msg}")

    if cfg.max_interests < 1:
        bad("max_interests", f"must be >= 1, got {cfg.max_interests}")
    if cfg.extractor not in EXTRACTORS:
        bad("extractor", f"one of {', '.join(EXTRACTORS)}, got {cfg.extractor!r}")
    if cfg.selection_training not in ("gumbel", "expected"):
        bad("selection_training", f"gumbel or expected, got {cfg.selection_training!r}")
    if cfg.readout not in ("max", "positive"):
        bad("readout", f"max or positive, got {cfg.readout!r}")
    if cfg.prototype_update not in ("learned", "kmeans"):
        bad("prototype_update", f"learned or kmeans, got {cfg.prototype_update!r}")
    if cfg.collision not in ("mask", "none"):
        bad("collision", f"mask or none, got {cfg.collision!r}")
    for field in ("temperature", "prototype_temperature", "selection_temperature"):
        if not getattr(cfg, field) > 0:
            bad(field, f"must be > 0, got {getattr(cfg, field)}")
    if cfg.prototypes < 0 or cfg.mixed_negatives < 0:
        bad("prototypes" if cfg.prototypes < 0 else "mixed_negatives", "must be >= 0")
    if cfg.prototypes > n_items:
        bad("prototypes", f"{cfg.prototypes} prototypes for {n_items} items of {spec.keys['item']!r} in "
                          f"{spec.source}: use at most {n_items} (a prototype is a cluster of items)")
    names = {f.name: f for f in spec.inputs}
    for field in ("activeness_features", "profile_features"):
        for n in getattr(cfg, field):
            if n not in names or isinstance(names[n], SequenceFeature) or n == spec.keys["item"]:
                bad(field, f"{n!r} is not a non-sequence user feature of {spec.source} "
                           f"({[f for f in names if not isinstance(names[f], SequenceFeature)]})")
            if field == "activeness_features" and not isinstance(names[n], DenseFeature):
                bad(field, f"{n!r} is a {names[n].kind} feature; activeness features are dense")


class MultiInterestModel(ZooModel):
    """K_max interests per user + adaptive selection + prototypes (see the module docstring).

    The retrieval protocol: `query_model` (raw inputs -> {"interests", "mask"}), `item_model` (item id -> [B, d]),
    `query_inputs`, `item_inputs`, `item_key`, `label_task`, `spec`; `on_epoch_start` re-clusters prototypes.
    """

    export_kind = "retrieval"
    export_options = {"k": 100, "scann": True}

    def __init__(self, spec: FeatureSpec, artifacts, cfg: MultiInterestConfig, name: str = "multi_interest",
                 **kwargs):
        item_key, history, hist_field = target_and_history(spec, None, cfg.history or None)
        vocab = np.asarray(artifacts.vocabs.get(spec.table_of(item_key), []))
        if not len(vocab):      # the corpus to retrieve from, draw mixed negatives from and cluster is the vocabulary
            raise ValueError(f"{spec.source}: {name} needs a vocabulary for {item_key!r} (the retrieval corpus); "
                             f"its table {spec.table_of(item_key)!r} is hashed or empty: give it `vocab:`")
        n_rows = artifacts.vocab_size(spec, spec.table_of(item_key))
        _check(cfg, spec, len(vocab), name)
        binary = [lab for lab in spec.labels if lab.type == "binary"]
        label = cfg.label or (binary[0].task if binary else "")
        if label not in {lab.task for lab in spec.labels}:
            raise ValueError(f"{spec.source}: {name} needs a positive label: set `label:` to one of "
                             f"{[lab.task for lab in spec.labels]} (default: the first binary label)")
        emb = FeatureEmbeddings(spec, artifacts)
        d, k_max = cfg.output_dim, cfg.max_interests
        # the item space: id embedding -> item_units -> linear map, shared by candidates and history steps
        project = [keras.layers.Dense(u, activation="relu", name=f"item_tower_dense{i}")
                   for i, u in enumerate(cfg.item_units)] + [keras.layers.Dense(d, name="item_tower_output")]

        def to_item_space(x):
            for layer in project:
                x = layer(x)
            return x

        l2 = keras.layers.UnitNormalization(axis=-1, name="item_l2") if cfg.normalize else None
        item_in = build_inputs(spec)
        v = to_item_space(emb.id(item_key, item_in))
        item_model = keras.Model({item_key: item_in[item_key]}, l2(v) if l2 else v, name="item_tower")

        inputs = build_inputs(spec)
        seq = spec[history]
        mask = emb.mask(history, inputs)
        h = to_item_space(emb.id(hist_field, inputs))                                         # [B, L, d]
        lengths = inputs[seq.length_name]
        if cfg.extractor == "self_attentive":
            extractor = SelfAttentiveInterests(k_max, cfg.attention_units or 4 * d, name="interests")
            args = [h, mask]
            if cfg.positions:       # recency positions: the latest step is 0, padding clipped to 0
                steps = tf.range(seq.max_len)[None, :]
                recency = tf.maximum(tf.cast(lengths, tf.int32)[:, None] - 1 - steps, 0)
                pos = at_level(keras.layers.Embedding(seq.max_len, d, name="position_embedding"), 0)(recency)
                args.append(keras.layers.Add(name="history_with_positions")([h, pos]))
            interests = extractor(args)
        else:
            interests = CapsuleInterests(k_max, cfg.routing_iterations, d, cfg.seed, cfg.capsule_maps,
                                         name="interests")([h, mask])
        if cfg.profile_features or cfg.interest_units:
            parts = [interests]
            if cfg.profile_features:
                profile = concat([emb.feature(n, inputs) for n in cfg.profile_features], "profile")
                parts.append(keras.layers.RepeatVector(k_max, name="profile_per_interest")(profile))
            x = mlp(concat(parts, "interest_with_profile"), cfg.interest_units, name="interest_mlp")
            interests = keras.layers.Dense(d, name="interest_output")(x)
        if cfg.normalize:
            interests = keras.layers.UnitNormalization(axis=-1, name="interest_l2")(interests)
        train_outputs = {"interests": interests}
        if cfg.adaptive:
            activity = tf.math.log1p(tf.cast(tf.reshape(lengths, [-1, 1]), tf.float32))
            x = concat([activity] + [emb.dense(n, inputs) for n in cfg.activeness_features], "activeness")
            selection = AdaptiveInterestSelection(k_max, cfg.selection_units, cfg.selection_temperature,
                                                  name="interest_selection")
            train_outputs["mask"] = selection(x)
            train_outputs["count_logits"] = selection.count_logits(x)
        else:
            train_outputs["mask"] = tf.ones_like(interests[:, :, 0])
        served = {k: train_outputs[k] for k in ("interests", "mask")}
        query_model = keras.Model(used_inputs(inputs, served), served, name="query_tower")
        train_query = keras.Model(used_inputs(inputs, train_outputs), train_outputs, name="query_tower_train")

        # the ZooModel contract ({task: prediction}): the row's item scored by the best active interest
        model_in = {**{k: inputs[k] for k in query_model.input_names}, item_key: inputs[item_key]}
        q = query_model({k: model_in[k] for k in query_model.input_names})
        item_vec = item_model({item_key: model_in[item_key]})
        dots = tf.einsum("bkd,bd->bk", q["interests"], item_vec)
        score = tf.reduce_max(tf.where(q["mask"] > 0.5, dots, NEG), axis=1, keepdims=True)
        logit = keras.layers.Rescaling(1.0 / cfg.temperature, name="score")(score)
        outputs = relevance_outputs(spec, logit)
        aux = {"retrieval": 1.0}
        if cfg.prototypes:
            aux["prototype"] = 0.1
        if cfg.adaptive:
            aux["interest_count"] = 0.0
            aux["all_interests"] = 0.0
        super().__init__(model_in, outputs, spec=spec, name=name, tasks={}, aux_loss_weights=aux, **kwargs)

        self.label_task, self.item_key = label, item_key
        self.query_model, self.item_model = query_model, item_model
        self.query_inputs, self.item_inputs = list(query_model.input_names), [item_key]
        self._train_query = train_query
        self._item_lookup = emb.lookup(spec.table_of(item_key))
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_vocab", tf.constant(vocab))
        self.item_counts = tf.Variable(tf.zeros([n_rows], tf.float32), trainable=False, name="logq_item_counts")
        self.rows_seen = tf.Variable(0.0, trainable=False, name="logq_rows_seen")
        if cfg.prototypes:
            init = tf.math.l2_normalize(tf.random.stateless_normal([cfg.prototypes, d], seed=[cfg.seed, 1]), -1)
            self.prototype_vectors = tf.Variable(init, trainable=cfg.prototype_update == "learned",
                                                 name="prototypes")

    def evaluation_protocol(self, spec) -> str:
        return "retrieval"

    # -- platform hook -------------------------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, corpus) -> dict:
        """k-means prototypes: spherical k-means (seeded by epoch) over `corpus()`'s item vectors -> the prototypes.
        Learned prototypes are left as they are; both report how the corpus spreads over them (learned ones can
        collapse onto a few prototypes, and then the collision mask removes most negatives: the log shows it)."""
        if not self._cfg.prototypes:
            return {}
        _, vectors = corpus()
        if self._cfg.prototype_update == "kmeans":
            centroids, assign = kmeans(vectors, self._cfg.prototypes, seed=self._cfg.seed * 1000 + epoch)
            self.prototype_vectors.assign(centroids)
        else:
            protos = self.prototype_vectors.numpy()
            assign = np.argmax(vectors @ (protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True),
                                                              1e-12)).T, axis=1)
        sizes = np.bincount(assign, minlength=self._cfg.prototypes)
        return {"prototype_cluster_min": int(sizes.min()), "prototype_cluster_max": int(sizes.max()),
                "prototypes_in_use": int((sizes > 0).sum())}

    # -- loss ----------------------------------------------------------------------------------------------------------
    def _candidate_logits(self, interests, mask, positives, candidates):
        """[B, N] scores of every candidate for every row, by the configured read-out."""
        if self._cfg.readout == "max":
            return multi_interest_scores(interests, mask, candidates)
        # the active interest closest to the row's positive scores every candidate; the mask factor (exactly 1)
        # carries the straight-through gradient to a selection layer
        dots = tf.einsum("bkd,bd->bk", interests, positives)
        best = tf.argmax(tf.where(mask > 0.5, dots, NEG), axis=1, output_type=tf.int32)
        chosen = tf.gather(interests * mask[:, :, None], best, batch_dims=1)                    # [B, d]
        return tf.matmul(chosen, candidates, transpose_b=True)

    def compute_loss(self, inputs, training: bool = False):
        cfg = self._cfg
        x, y, sw = keras.utils.unpack_x_y_sample_weight(inputs)
        q = self._train_query({k: x[k] for k in self._train_query.input_names}, training=training)
        interests, mask = q["interests"], tf.cast(q["mask"], tf.float32)
        v = self.item_model({self.item_key: x[self.item_key]}, training=training)
        rows = self._item_lookup(x[self.item_key])
        batch = tf.shape(rows)[0]
        cands, cand_rows = v, rows
        if cfg.mixed_negatives:
            pick = tf.random.uniform([cfg.mixed_negatives], 0, tf.shape(self._vocab)[0], dtype=tf.int32)
            sampled = tf.gather(self._vocab, pick)
            cands = tf.concat([v, self.item_model({self.item_key: sampled}, training=training)], 0)
            cand_rows = tf.concat([rows, self._item_lookup(sampled)], 0)
        # what every scoring of this batch shares: the logQ shift [N] and the removed (row, candidate) pairs [B, N]
        shift = tf.zeros([tf.shape(cands)[0]])
        if cfg.logq_correction:
            if training:
                self.item_counts.scatter_add(tf.IndexedSlices(tf.ones_like(rows, tf.float32), rows))
                self.rows_seen.assign_add(tf.cast(batch, tf.float32))
            p = tf.gather(self.item_counts, rows) / tf.maximum(self.rows_seen, 1.0)
            expected = tf.cast(batch, tf.float32) * p
            if cfg.mixed_negatives:
                n_vocab = tf.cast(tf.shape(self._vocab)[0], tf.float32)
                expected = tf.concat([expected, tf.fill([cfg.mixed_negatives], cfg.mixed_negatives / n_vocab)], 0)
            shift = -tf.math.log(tf.maximum(expected, 1e-9))
        n = tf.shape(cands)[0]
        diagonal = tf.cast(tf.eye(batch, n), tf.bool)
        removed = tf.zeros([batch, n], tf.bool)
        if cfg.remove_accidental_hits:
            removed = removed | (tf.equal(rows[:, None], cand_rows[None, :]) & ~diagonal)
        protos = None
        if cfg.prototypes:
            protos = tf.math.l2_normalize(self.prototype_vectors, -1)
            if cfg.collision == "mask":
                of = nearest_prototype(tf.stop_gradient(tf.math.l2_normalize(cands, -1)), protos)
                removed = removed | (collision_mask(of[:batch], of) & ~diagonal)
        w = positive_row_weights(y, sw, self.label_task)

        def row_losses(active):
            logits = self._candidate_logits(interests, active, v, cands) / cfg.temperature + shift[None, :]
            return tf.nn.softmax_cross_entropy_with_logits(labels=tf.cast(diagonal, tf.float32),
                                                           logits=mask_collisions(logits, removed))

        def mean(per_row):
            return tf.math.divide_no_nan(tf.reduce_sum(per_row * w), tf.reduce_sum(w))

        if cfg.adaptive and cfg.selection_training == "expected":
            # the exact expected loss over k ~ softmax(z): one loss per prefix of 1..K_max slots, weighted by the
            # selection's probabilities (no sampling, and a closed slot's value is seen: the straight-through
            # mask gives no gradient towards opening a slot, whose scores are excluded by value)
            probs = tf.nn.softmax(q["count_logits"], axis=-1)
            prefix = tf.sequence_mask(tf.range(1, cfg.max_interests + 1), cfg.max_interests, dtype=tf.float32)
            per_k = tf.stack([row_losses(tf.broadcast_to(prefix[j], tf.shape(mask)))
                              for j in range(cfg.max_interests)], axis=1)                         # [B, K_max]
            losses = {"retrieval": mean(tf.reduce_sum(probs * per_k, axis=1))}
        else:
            losses = {"retrieval": mean(row_losses(mask))}
        if cfg.adaptive and self.loss_weights.get("all_interests"):
            # every slot scored, whatever the selection: a slot the selection rarely opens still learns, so the
            # selection compares trained interests, not a trained one with untrained ones
            losses["all_interests"] = mean(row_losses(tf.ones_like(mask)))
        if protos is not None and self.loss_weights.get("prototype"):
            unit = tf.math.l2_normalize(v, -1)
            losses["prototype"] = prototype_contrastive_loss(
                unit, protos, nearest_prototype(tf.stop_gradient(unit), protos), cfg.prototype_temperature)
        if cfg.adaptive and self.loss_weights.get("interest_count"):
            probs = tf.nn.softmax(q["count_logits"], axis=-1)
            ks = tf.range(1, cfg.max_interests + 1, dtype=tf.float32)
            losses["interest_count"] = tf.reduce_mean(tf.reduce_sum(probs * ks, -1)) / cfg.max_interests
        for name, value in losses.items():
            self._trackers[f"{name}_loss"].update_state(value)
        return tf.add_n([self.loss_weights[k] * val for k, val in losses.items()])


# -- the registry: the paper's model and its baselines, one config each -----------------------------------------------
@register_model("adaptive_interests_pcl", MultiInterestConfig)
def adaptive_interests_pcl(spec, artifacts, cfg: MultiInterestConfig):
    """Paper 3: self-attentive interests, adaptive interest count, prototypical contrastive learning (set
    `prototypes`)."""
    return MultiInterestModel(spec, artifacts, cfg, name="adaptive_interests_pcl")


@dataclass(frozen=True)
class MINDConfig(MultiInterestConfig):
    extractor: str = "capsule"
    capsule_maps: str = "shared"
    adaptive: bool = False
    readout: str = "positive"
    interest_units: tuple = (256,)


@register_model("mind", MINDConfig)
def mind(spec, artifacts, cfg: MINDConfig):
    """MIND (Li et al., CIKM 2019): capsule routing with one shared map, ReLU layer over [capsule, profile]."""
    return MultiInterestModel(spec, artifacts, cfg, name="mind")


@dataclass(frozen=True)
class ComiRecSAConfig(MultiInterestConfig):
    adaptive: bool = False
    readout: str = "positive"


@register_model("comirec_sa", ComiRecSAConfig)
def comirec_sa(spec, artifacts, cfg: ComiRecSAConfig):
    """ComiRec-SA (Cen et al., KDD 2020): self-attentive interests, fixed K."""
    return MultiInterestModel(spec, artifacts, cfg, name="comirec_sa")


@dataclass(frozen=True)
class ComiRecDRConfig(MultiInterestConfig):
    extractor: str = "capsule"
    capsule_maps: str = "per_interest"
    adaptive: bool = False
    readout: str = "positive"


@register_model("comirec_dr", ComiRecDRConfig)
def comirec_dr(spec, artifacts, cfg: ComiRecDRConfig):
    """ComiRec-DR (Cen et al., KDD 2020): dynamic routing with a map per interest, fixed K."""
    return MultiInterestModel(spec, artifacts, cfg, name="comirec_dr")
