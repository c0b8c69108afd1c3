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

from .._tf import tf
from . import register_model
from .common import used_inputs
from .seminar import LifelongConfig, LifelongModel, lifelong_network


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


class SeminarPSU(LifelongModel):
    """The PSU: `seminar`'s functional network whose loss adds L_align and L_qi (auxiliary losses `align` and
    `relevance`, default weights from the config; `losses: {align: w}` in the experiment overrides them). The
    task losses (next pair) are scaled by `next_weight`."""

    def __init__(self, spec, artifacts, cfg: LifelongConfig, **kwargs):
        inputs, outputs, logits, aux = lifelong_network(spec, artifacts, cfg)
        super().__init__(used_inputs(inputs, outputs), outputs, spec=spec, name="seminar_psu", logits=logits,
                         aux_outputs={f"aux/{k}": v for k, v in aux.items()},
                         aux_loss_weights={"align": cfg.align_weight, "relevance": cfg.relevance_weight}, **kwargs)
        object.__setattr__(self, "psu_config", cfg)
        object.__setattr__(self, "modalities", [
            k[len("step_"):] for k in aux if k.startswith("step_") and k not in
            ("step_rows", "step_item", "step_query", "step_query_present", "step_query_rows")])
        for task in self.task_names:
            self.loss_weights[task] *= cfg.next_weight

    def set_loss_weights(self, weights: dict[str, float], source: str = "losses") -> None:
        super().set_loss_weights(weights, source)
        for task in set(weights) & set(self.task_names):
            self.loss_weights[task] *= self.psu_config.next_weight

    def auxiliary_losses(self, features, outputs, training):
        out = {}
        if self.loss_weights.get("align"):
            out["align"] = self.align_loss(outputs)
        if self.loss_weights.get("relevance"):
            out["relevance"] = self.relevance_loss(outputs)
        return out

    def align_loss(self, out):
        if len(self.modalities) < 2:
            return tf.constant(0.0)
        cfg = self.psu_config
        rows = tf.boolean_mask(out["aux/step_rows"], out["aux/mask"])
        uniq, idx = tf.unique(tf.cast(rows, tf.int64))
        first = tf.math.unsorted_segment_min(tf.range(tf.shape(rows)[0]), idx, tf.shape(uniq)[0])
        pick = _subset(first, cfg.aux_steps)
        vecs = {m: tf.gather(tf.boolean_mask(out[f"aux/step_{m}"], out["aux/mask"]), pick) for m in self.modalities}
        pairs = list(itertools.combinations(self.modalities, 2))

        def loss():
            return tf.add_n([(info_nce(vecs[a], vecs[b], cfg.temperature)
                              + info_nce(vecs[b], vecs[a], cfg.temperature)) / 2 for a, b in pairs]) / len(pairs)
        return tf.cond(tf.shape(pick)[0] > 1, loss, lambda: tf.constant(0.0))

    def relevance_loss(self, out):
        if "aux/step_query" not in out:
            return tf.constant(0.0)
        cfg = self.psu_config
        sel = tf.logical_and(tf.cast(out["aux/mask"], tf.bool), out["aux/step_query_present"] > 0)
        n = tf.reduce_sum(tf.cast(sel, tf.int32))
        pick = _subset(tf.range(n), cfg.aux_steps)
        q = tf.gather(tf.boolean_mask(out["aux/step_query"], sel), pick)
        v = tf.gather(tf.boolean_mask(out["aux/step_item"], sel), pick)
        item_rows = tf.gather(tf.boolean_mask(out["aux/step_rows"], sel), pick)
        query_rows = tf.gather(tf.boolean_mask(out["aux/step_query_rows"], sel), pick)
        same = tf.equal(item_rows[:, None], item_rows[None, :]) | tf.equal(query_rows[:, None], query_rows[None, :])
        return tf.cond(tf.shape(pick)[0] > 1, lambda: info_nce(q, v, cfg.temperature, same),
                       lambda: tf.constant(0.0))


@register_model("seminar_psu", LifelongConfig)
def seminar_psu(spec, artifacts, cfg: LifelongConfig):
    """SEMINAR's PSU: the seminar network pretrained with next-pair, multi-modal alignment and relevance losses."""
    return SeminarPSU(spec, artifacts, cfg)
