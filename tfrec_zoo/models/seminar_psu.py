"""SEMINAR's Pretraining Search Unit (PSU): the SEMINAR network trained with three objectives (digest §1.5).

    loss = next_weight * L_next + align_weight * L_align + relevance_weight * L_qi

* L_next: next query-item pair prediction: the task losses of the target pair (BCE of the positive next pair and
  its sampled negative), through the same GSU + ESU + tower as fine-tuning.
* L_align: multi-modal alignment: for every pair of item modalities (id <-> genres, id <-> title, genres <->
  title, ...) a symmetric InfoNCE over the batch's distinct history items (L2-normalised, temperature tau):
  an item's two modality vectors are the positive pair, the other items' vectors the negatives.
* L_qi: query-item relevance, a real InfoNCE (the official code's version is minimised by pushing positives
  apart): each history step with a query scores its own item against the other steps' items,
  -log(e^{s+/tau} / sum_j e^{s_j/tau}); steps whose item or query equals the anchor's are not negatives.

Both contrastive terms use at most `aux_steps` distinct steps per batch (a random subset). The model's outputs and
variable names are those of `seminar` with the same config, so a fine-tuning run restores them by name
(`restore: {include: ['^emb_', '^item_modalities/', '^query_modalities/', ...]}`, training/restore.py).
"""
from __future__ import annotations

import itertools

from .._tf import keras, tf
from . import register_model
from .seminar import LifelongConfig, lifelong_network


def _l2(x):
    return tf.math.l2_normalize(x, axis=-1)


def info_nce(anchors, positives, temperature: float, same=None):
    """Mean of -log softmax(a_i . p_j / tau)_ii over rows (cosine similarities); `same` [N, N] bool marks pairs
    that are not negatives (excluded from the denominator, the diagonal always kept)."""
    logits = tf.matmul(_l2(anchors), _l2(positives), transpose_b=True) / temperature
    n = tf.shape(logits)[0]
    if same is not None:
        logits = tf.where(same & ~tf.eye(n, dtype=tf.bool), tf.constant(-1e9, logits.dtype), logits)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.range(n), logits=logits))


def _subset(selected, limit: int):
    """At most `limit` of the given positions, a random subset when there are more."""
    return tf.random.shuffle(selected)[:limit]


class SeminarPSU(keras.Model):
    """The PSU: `seminar`'s functional network with a train_step that adds L_align and L_qi."""

    def __init__(self, spec, artifacts, cfg: LifelongConfig, **kwargs):
        inputs, outputs, aux = lifelong_network(spec, artifacts, cfg)
        probe = keras.Model(inputs, outputs)
        used = {layer.name for layer in probe.layers
                if isinstance(layer, keras.layers.InputLayer) and layer._outbound_nodes}
        inputs = {k: v for k, v in inputs.items() if k in used}
        super().__init__(inputs=inputs, outputs=outputs, name="seminar_psu", **kwargs)
        self.config = cfg
        self.modalities = [k[len("step_"):] for k in aux if k.startswith("step_") and k not in
                           ("step_rows", "step_item", "step_query", "step_query_present", "step_query_rows")]
        self.aux_model = keras.Model(inputs, {**outputs, **{f"aux/{k}": v for k, v in aux.items()}})
        self._trackers = {n: keras.metrics.Mean(name=n) for n in ("loss_next", "loss_align", "loss_relevance")}

    @property
    def metrics(self):
        return super().metrics + list(self._trackers.values())

    def align_loss(self, out):
        if len(self.modalities) < 2:
            return tf.constant(0.0)
        rows = tf.boolean_mask(out["aux/step_rows"], out["aux/mask"])
        uniq, idx = tf.unique(tf.cast(rows, tf.int64))
        first = tf.math.unsorted_segment_min(tf.range(tf.shape(rows)[0]), idx, tf.shape(uniq)[0])
        pick = _subset(first, self.config.aux_steps)
        vecs = {m: tf.gather(tf.boolean_mask(out[f"aux/step_{m}"], out["aux/mask"]), pick) for m in self.modalities}
        pairs = list(itertools.combinations(self.modalities, 2))

        def loss():
            return tf.add_n([(info_nce(vecs[a], vecs[b], self.config.temperature)
                              + info_nce(vecs[b], vecs[a], self.config.temperature)) / 2 for a, b in pairs]) / len(pairs)
        return tf.cond(tf.shape(pick)[0] > 1, loss, lambda: tf.constant(0.0))

    def relevance_loss(self, out):
        if "aux/step_query" not in out:
            return tf.constant(0.0)
        sel = tf.logical_and(tf.cast(out["aux/mask"], tf.bool), out["aux/step_query_present"] > 0)
        n = tf.reduce_sum(tf.cast(sel, tf.int32))
        pick = _subset(tf.range(n), self.config.aux_steps)
        q = tf.gather(tf.boolean_mask(out["aux/step_query"], sel), pick)
        v = tf.gather(tf.boolean_mask(out["aux/step_item"], sel), pick)
        item_rows = tf.gather(tf.boolean_mask(out["aux/step_rows"], sel), pick)
        query_rows = tf.gather(tf.boolean_mask(out["aux/step_query_rows"], sel), pick)
        same = tf.equal(item_rows[:, None], item_rows[None, :]) | tf.equal(query_rows[:, None], query_rows[None, :])
        return tf.cond(tf.shape(pick)[0] > 1, lambda: info_nce(q, v, self.config.temperature, same),
                       lambda: tf.constant(0.0))

    def train_step(self, data):
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        cfg = self.config
        with tf.GradientTape() as tape:
            out = self.aux_model(x, training=True)
            preds = {k: out[k] for k in self.output_names}
            next_loss = self.compiled_loss(y, preds, sw, regularization_losses=self.losses)
            align = self.align_loss(out) if cfg.align_weight else tf.constant(0.0)
            relevance = self.relevance_loss(out) if cfg.relevance_weight else tf.constant(0.0)
            total = cfg.next_weight * next_loss + cfg.align_weight * align + cfg.relevance_weight * relevance
        self.optimizer.minimize(total, self.trainable_variables, tape=tape)
        self.compiled_metrics.update_state(y, preds, sw)
        for name, value in (("loss_next", next_loss), ("loss_align", align), ("loss_relevance", relevance)):
            self._trackers[name].update_state(value)
        return {m.name: m.result() for m in self.metrics}


@register_model("seminar_psu", LifelongConfig)
def seminar_psu(spec, artifacts, cfg: LifelongConfig):
    """SEMINAR's PSU: the seminar network pretrained with next-pair, multi-modal alignment and relevance losses."""
    return SeminarPSU(spec, artifacts, cfg)
