"""Multi-interest layers and losses (tfrec_zoo/layers/multi_interest.py) against numpy references written here.

Weights are set to seeded random values before comparing. Every extractor is also checked for the two masking
promises: padded steps never change an output, and an empty history gives zeros with finite gradients.
"""
from __future__ import annotations

import numpy as np
import pytest

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.layers.multi_interest import (NEG, AdaptiveInterestSelection, CapsuleInterests, SelfAttentiveInterests,
                                             collision_mask, mask_collisions, multi_interest_scores, nearest_prototype,
                                             prototype_contrastive_loss)

# row 0 full, row 1 partial (with a gap), row 2 empty
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def _randomise(layer, seed: int = 7):
    rng = _rng(seed)
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in layer.weights])


def _softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_self_attentive(h, mask, w1, b1, w2):
    logits = np.einsum("bla,ak->bkl", np.tanh(h @ w1 + b1), w2)                          # [B, K, L]
    out = np.zeros((h.shape[0], w2.shape[1], h.shape[2]))
    for b in range(h.shape[0]):
        steps = mask[b]
        if steps.any():
            out[b] = _softmax(logits[b][:, steps]) @ h[b][steps]
    return out


def _np_squash(z):
    sq = (z ** 2).sum(-1, keepdims=True)
    return sq / (1 + sq) / np.sqrt(sq + 1e-9) * z


def _np_capsules(h, mask, bilinear, init, iterations):
    u_hat = h.astype(np.float64) @ bilinear                                                # [B, L, U]
    logits = np.broadcast_to(init, (h.shape[0],) + init.shape).astype(np.float64)           # [B, L, K]
    for r in range(iterations):
        w = _softmax(logits, axis=-1) * mask[:, :, None]
        caps = _np_squash(np.einsum("blk,blu->bku", w, u_hat))
        logits = logits + np.einsum("blu,bku->blk", u_hat, caps)
    return caps


def _history(seed: int, d: int = 4):
    rng = _rng(seed)
    return _f32(rng, 3, 5, d), MASK


EXTRACTORS = {
    "self_attentive": lambda: SelfAttentiveInterests(num_interests=3, hidden_units=6),
    "capsule": lambda: CapsuleInterests(num_interests=3, iterations=3, units=5, seed=11),
}


def test_self_attentive_matches_numpy():
    h, mask = _history(1)
    layer = SelfAttentiveInterests(num_interests=3, hidden_units=6)
    layer([h, mask])
    _randomise(layer)
    got = layer([h, mask]).numpy()
    w1, b1, w2 = layer.get_weights()
    assert got.shape == (3, 3, 4)
    np.testing.assert_allclose(got, _np_self_attentive(h, mask, w1, b1, w2), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[0, 0], got[0, 1])                       # the K read-outs really differ


def test_self_attentive_default_hidden_is_four_times_width():
    layer = SelfAttentiveInterests(num_interests=2)
    layer([*_history(2)])
    assert layer.w1.shape == (4, 16) and layer.w2.shape == (16, 2)


def test_capsules_match_numpy():
    h, mask = _history(3)
    layer = CapsuleInterests(num_interests=3, iterations=3, units=5, seed=11)
    layer([h, mask])
    _randomise(layer)
    got = layer([h, mask]).numpy()
    init = layer.initial_logits(5).numpy()
    assert got.shape == (3, 3, 5)
    np.testing.assert_allclose(got, _np_capsules(h, mask, layer.get_weights()[0], init, 3), rtol=1e-4, atol=1e-6)
    assert (np.linalg.norm(got[:2], axis=-1) < 1).all()                # squashed


def _np_capsules_per_interest(h, mask, maps, iterations):
    u_hat = np.einsum("bld,kdu->blku", h.astype(np.float64), maps)                          # [B, L, K, U]
    logits = np.zeros(u_hat.shape[:3])                                                      # ComiRec-DR: zeros
    for _ in range(iterations):
        w = _softmax(logits, axis=-1) * mask[:, :, None]
        caps = _np_squash(np.einsum("blk,blku->bku", w, u_hat))
        logits = logits + np.einsum("blku,bku->blk", u_hat, caps)
    return caps


def test_per_interest_capsules_match_numpy():
    h, mask = _history(7)
    layer = CapsuleInterests(num_interests=3, iterations=3, units=5, maps="per_interest")
    layer([h, mask])
    _randomise(layer)
    assert layer.bilinear.shape == (3, 4, 5)
    np.testing.assert_array_equal(layer.initial_logits(5).numpy(), np.zeros((5, 3)))
    got = layer([h, mask]).numpy()
    np.testing.assert_allclose(got, _np_capsules_per_interest(h, mask, layer.get_weights()[0], 3), rtol=1e-4,
                               atol=1e-6)
    assert np.abs(got[0, 0] - got[0, 1]).max() > 1e-4                  # the maps alone make the capsules differ
    assert np.abs(got[2]).max() == 0                                   # no valid step: zero capsules
    with pytest.raises(ValueError, match="maps must be 'shared'"):
        CapsuleInterests(num_interests=2, maps="per_step")


def test_capsule_initial_logits_fixed_and_asymmetric():
    a = CapsuleInterests(num_interests=4, seed=5).initial_logits(6).numpy()
    b = CapsuleInterests(num_interests=4, seed=5).initial_logits(6).numpy()
    c = CapsuleInterests(num_interests=4, seed=6).initial_logits(6).numpy()
    np.testing.assert_array_equal(a, b)                                # stateless: the same at every call / process
    assert not np.allclose(a, c) and a.shape == (6, 4)
    assert np.abs(a[:, :, None] - a[:, None, :]).sum(0)[~np.eye(4, dtype=bool)].min() > 0   # no two columns alike


def test_capsules_differ_per_interest():
    # zero initial logits with a shared map would give K identical capsules: the random init must prevent that
    h, mask = _history(4)
    layer = CapsuleInterests(num_interests=3, iterations=3)
    caps = layer([h, mask]).numpy()
    for b in range(2):
        assert np.abs(caps[b, 0] - caps[b, 1]).max() > 1e-4 and np.abs(caps[b, 1] - caps[b, 2]).max() > 1e-4


def test_capsules_gradient_only_through_last_round():
    h, mask = _history(5)
    three = CapsuleInterests(num_interests=2, iterations=3, seed=1)
    three([h, mask])
    _randomise(three)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(three([h, mask]) * _f32(_rng(6), 3, 2, 4))
    grad = tape.gradient(loss, three.bilinear)
    # reference: the routing weights of round 3 as constants, gradients of squash(sum w u^) w.r.t. S only
    init, s = three.initial_logits(5).numpy(), three.get_weights()[0]
    u_hat = h.astype(np.float64) @ s
    logits = np.broadcast_to(init, (3, 5, 2)).astype(np.float64)
    for _ in range(2):
        w = _softmax(logits) * mask[:, :, None]
        logits = logits + np.einsum("blu,bku->blk", u_hat, _np_squash(np.einsum("blk,blu->bku", w, u_hat)))
    w = tf.constant((_softmax(logits) * mask[:, :, None]).astype(np.float32))
    s_var = tf.Variable(s)
    with tf.GradientTape() as tape:
        z = tf.einsum("blk,blu->bku", w, tf.einsum("bld,du->blu", h, s_var))
        sq = tf.reduce_sum(tf.square(z), -1, keepdims=True)
        ref = tf.reduce_sum(sq / (1 + sq) / tf.sqrt(sq + 1e-9) * z * _f32(_rng(6), 3, 2, 4))
    np.testing.assert_allclose(grad.numpy(), tape.gradient(ref, s_var).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(EXTRACTORS))
def test_padded_steps_do_not_matter(kind):
    h, mask = _history(7)
    layer = EXTRACTORS[kind]()
    want = layer([h, mask]).numpy()
    noisy = np.where(mask[:, :, None], h, 100.0 * _f32(_rng(8), *h.shape))
    np.testing.assert_allclose(layer([noisy, mask]).numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(EXTRACTORS))
def test_empty_history_gives_zeros_and_finite_gradients(kind):
    h, mask = _history(9)
    layer = EXTRACTORS[kind]()
    x = tf.Variable(h)
    with tf.GradientTape() as tape:
        out = layer([x, mask])
        loss = tf.reduce_sum(out * _f32(_rng(10), *out.shape))
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    out = out.numpy()
    assert np.isfinite(out).all() and (out[2] == 0).all() and np.abs(out[:2]).sum(-1).min() > 0
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    assert (grads[0].numpy()[2] == 0).all() and (grads[0].numpy()[~mask] == 0).all()   # nothing leaks into padding
    assert np.abs(grads[0].numpy()[mask]).sum() > 0


@pytest.mark.parametrize("cls, kwargs, text", [
    (SelfAttentiveInterests, {"num_interests": 0}, "num_interests must be >= 1, got 0"),
    (CapsuleInterests, {"num_interests": 2, "iterations": 0}, "iterations must be >= 1, got 0"),
    (AdaptiveInterestSelection, {"max_interests": 0}, "max_interests must be >= 1, got 0"),
    (AdaptiveInterestSelection, {"max_interests": 3, "temperature": 0.0}, "temperature must be > 0, got 0.0"),
])
def test_bad_arguments_are_clear_value_errors(cls, kwargs, text):
    with pytest.raises(ValueError, match=f"{cls.__name__}: {text}"):
        cls(**kwargs)


# -- adaptive interest selection -----------------------------------------------------------------------------------
def _selector(seed: int):
    layer = AdaptiveInterestSelection(max_interests=4, hidden_units=(8,), temperature=0.5)
    x = _f32(_rng(seed), 256, 3)
    layer(x)
    _randomise(layer, seed=seed)
    return layer, x


def test_selection_inference_mask_is_exact_and_monotone():
    layer, x = _selector(16)
    k0, b0, k1, b1 = layer.get_weights()
    k = np.argmax(np.maximum(x @ k0 + b0, 0) @ k1 + b1, axis=-1) + 1
    assert set(k) == {1, 2, 3, 4}                                      # the batch covers every count
    for mask in (layer(x).numpy(), layer(x, training=False).numpy()):
        np.testing.assert_array_equal(mask, (np.arange(4)[None, :] < k[:, None]).astype(np.float32))
        assert (mask[:, 0] == 1).all() and (np.diff(mask, axis=1) <= 0).all()


def test_selection_training_is_hard_forward_with_gradients_to_the_mlp():
    layer, x = _selector(13)
    weights = tf.constant(_f32(_rng(14), 1, 4))
    tf.random.set_seed(1)
    with tf.GradientTape() as tape:
        mask = layer(x, training=True)
        loss = tf.reduce_sum(mask * weights)
    m = mask.numpy()
    assert set(np.unique(m)) <= {0.0, 1.0} and (m[:, 0] == 1).all() and (np.diff(m, axis=1) <= 0).all()
    grads = tape.gradient(loss, layer.trainable_weights)
    assert len(grads) == 4 and all(g is not None and np.abs(g.numpy()).max() > 0 for g in grads)


def test_selection_training_draws_k_from_the_softmax():
    # Gumbel-max: argmax(z + g) ~ Categorical(softmax(z)), whatever the temperature
    layer = AdaptiveInterestSelection(max_interests=3, hidden_units=(), temperature=0.3)
    x = np.zeros((20000, 2), np.float32)
    layer(x)
    p = np.array([0.2, 0.5, 0.3])
    layer.set_weights([np.zeros((2, 3), np.float32), np.log(p).astype(np.float32)])
    tf.random.set_seed(2)
    k = layer(x, training=True).numpy().sum(1).astype(int)
    np.testing.assert_allclose(np.bincount(k, minlength=4)[1:] / len(k), p, atol=0.015)
    np.testing.assert_array_equal(layer(x).numpy()[0], [1, 1, 0])     # inference: the mode, k = 2


# -- scores and losses ----------------------------------------------------------------------------------------------
def test_multi_interest_scores_max_over_active_interests():
    rng = _rng(15)
    v, e = _f32(rng, 3, 4, 5), _f32(rng, 6, 5)
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], np.float32)
    v[0, 3] = 50.0 * e[0]                                              # an inactive interest with a huge score
    got = multi_interest_scores(v, mask, e).numpy()
    dots = np.einsum("bkd,nd->bkn", v, e)
    want = np.stack([dots[b][mask[b] > 0].max(0) for b in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(multi_interest_scores(v, mask > 0, e).numpy(), want, rtol=1e-5)   # bool mask


def test_multi_interest_scores_without_active_interest_is_finite():
    rng = _rng(16)
    v, e = tf.Variable(_f32(rng, 2, 3, 4)), _f32(rng, 5, 4)
    mask = np.array([[0, 0, 0], [0, 1, 0]], np.float32)
    with tf.GradientTape() as tape:
        s = multi_interest_scores(v, mask, e)
        loss = tf.reduce_sum(s[1])
    s = s.numpy()
    assert (s[0] == NEG).all() and np.isfinite(s).all()
    g = tape.gradient(loss, v).numpy()
    assert np.isfinite(g).all() and (g[0] == 0).all() and (g[1, [0, 2]] == 0).all()
    np.testing.assert_allclose(g[1, 1], e.sum(0), rtol=1e-5)


def test_multi_interest_scores_hand_the_mask_its_straight_through_gradient():
    rng = _rng(17)
    v, e = _f32(rng, 2, 3, 4), _f32(rng, 5, 4)
    m = tf.Variable(np.array([[1, 1, 0], [1, 1, 1]], np.float32))
    with tf.GradientTape() as tape:
        s = multi_interest_scores(v, m, e)
    g = tape.gradient(s, m).numpy()                                    # d sum(s) / d m_bk
    dots = np.einsum("bkd,nd->bkn", v, e)
    winner = np.where(m.numpy()[:, :, None] > 0.5, dots, -np.inf).argmax(1)          # [B, N]
    want = np.zeros((2, 3))
    for b in range(2):
        for n in range(5):
            want[b, winner[b, n]] += dots[b, winner[b, n], n]
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    assert g[0, 2] == 0                                                # inactive: no gradient


def _np_proto_loss(e, c, s, tau):
    logits = e.astype(np.float64) @ c.T / tau
    logits -= logits.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(s)), s]))


@pytest.mark.parametrize("normalize", [False, True])
def test_prototype_contrastive_loss_matches_numpy(normalize):
    rng = _rng(18)
    e, c, s = _f32(rng, 6, 4), _f32(rng, 3, 4), np.array([0, 2, 1, 1, 0, 2])
    got = float(prototype_contrastive_loss(e, c, s, 0.2, normalize=normalize))
    if normalize:
        e, c = e / np.linalg.norm(e, axis=1, keepdims=True), c / np.linalg.norm(c, axis=1, keepdims=True)
    assert got == pytest.approx(_np_proto_loss(e, c, s, 0.2), rel=1e-5)


def test_prototype_contrastive_loss_bad_input():
    rng = _rng(19)
    e, c = _f32(rng, 2, 4), _f32(rng, 3, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"prototype id is outside \[0, 3\)"):
        prototype_contrastive_loss(e, c, [0, 3], 0.1)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        prototype_contrastive_loss(e, c, [0, 1], 0)


def test_nearest_prototype_is_euclidean():
    c = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 10.0]], np.float32)   # unequal norms: dot product alone would differ
    e = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]], np.float32)
    np.testing.assert_array_equal(nearest_prototype(e, c).numpy(), [0, 1, 0, 2])


def test_collision_mask_and_masked_logits():
    col = collision_mask(np.array([0, 2, 1]), np.array([2, 0, 2, 1])).numpy()
    np.testing.assert_array_equal(col, [[0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])
    in_batch = collision_mask(np.array([0, 2, 0]), np.array([0, 2, 0]), exclude_diagonal=True).numpy()
    np.testing.assert_array_equal(in_batch, [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    logits = _f32(_rng(20), 3, 4)
    masked = mask_collisions(logits, col).numpy()
    np.testing.assert_array_equal(masked, np.where(col, np.float32(NEG), logits))


def test_only_colliding_negatives_give_a_finite_loss():
    rng = _rng(21)
    pos_logit = tf.constant(_f32(rng, 2, 1))
    neg_logits = tf.Variable(_f32(rng, 2, 3))
    col = collision_mask([1, 0], [1, 1, 1])                            # row 0: every negative collides
    with tf.GradientTape() as tape:
        logits = tf.concat([pos_logit, mask_collisions(neg_logits, col)], axis=1)
        per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 0], logits=logits)
    loss = per_row.numpy()
    assert loss[0] == 0.0                                              # only the positive's term is left
    row1 = np.concatenate([pos_logit.numpy()[1], neg_logits.numpy()[1]])      # row 1: no collision, all kept
    assert loss[1] == pytest.approx(np.log(np.exp(row1).sum()) - row1[0], rel=1e-5)
    g = tape.gradient(per_row, neg_logits).numpy()
    assert np.isfinite(g).all() and (g[0] == 0).all() and (g[1] > 0).all()


def test_layers_run_in_a_functional_model_with_unknown_length():
    # the history length is only known at run time (tf.shape), as in a model's serving signature
    h_in, m_in = keras.Input((None, 4)), keras.Input((None,), dtype=tf.bool)
    x_in = keras.Input((3,))
    sa = SelfAttentiveInterests(num_interests=2)([h_in, m_in])
    caps = CapsuleInterests(num_interests=2, iterations=2)([h_in, m_in])
    mask = AdaptiveInterestSelection(max_interests=2)(x_in)
    model = keras.Model([h_in, m_in, x_in], [sa, caps, mask])
    h, m = _history(26)
    x = _f32(_rng(27), 3, 3)
    eager = [t.numpy() for t in model([h, m, x])]
    traced = [t.numpy() for t in tf.function(model)([h, m, x])]
    assert [t.shape for t in eager] == [(3, 2, 4), (3, 2, 4), (3, 2)]
    for a, b in zip(eager, traced):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)     # graph vs eager: round-off only
