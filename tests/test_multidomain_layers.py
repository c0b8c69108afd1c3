"""Multi-domain layers (tfrec_zoo/layers/multidomain.py, divergence.py) against numpy references written here.

Weights are set to seeded random values before comparing, so identity / ones / zeros initialisers cannot hide a
wrong formula. Divergences are checked to 1e-5 (float32 TF vs float64 numpy), including absent domains and batches
with a single domain (exactly 0, finite gradients).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.layers.divergence import DomainDivergence, js_penalty, mmd_penalty
from tfrec_zoo.layers.multidomain import PLE, AspectGatingFusion, DomainLinearMaps, STARTopology


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _randomise(layer, seed: int = 7):
    """Seeded random weights; variances stay positive (a negative moving variance would make NaN, and NaN == NaN
    in assert_allclose would hide a difference)."""
    rng = _rng(seed)
    values = [rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in layer.weights]
    layer.set_weights([np.abs(v) + 0.1 if "moving_var" in w.name else v for v, w in zip(values, layer.weights)])


def _assert_close(got, want, **tol):
    got, want = np.asarray(got), np.asarray(want)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, **tol)


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _relu(z):
    return np.maximum(z, 0.0)


# -- divergence references -----------------------------------------------------------------------------------------
def _present_pairs(domain, num_domains):
    present = [d for d in range(num_domains) if (domain == d).any()]
    return [(i, j) for a, i in enumerate(present) for j in present[a + 1:]]


def _np_mmd(x, domain, num_domains, bandwidth):
    x = x.astype(np.float64)

    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * bandwidth ** 2)).mean()
    vals = []
    for i, j in _present_pairs(domain, num_domains):
        a, b = x[domain == i], x[domain == j]
        vals.append(k(a, a) + k(b, b) - 2 * k(a, b))
    return float(np.mean(vals)) if vals else 0.0


def _np_js(x, domain, num_domains):
    x = x.astype(np.float64)
    vals = []
    for i, j in _present_pairs(domain, num_domains):
        p, q = _softmax(x[domain == i].mean(0)), _softmax(x[domain == j].mean(0))
        m = (p + q) / 2
        vals.append(0.5 * (p * np.log(p / m)).sum() + 0.5 * (q * np.log(q / m)).sum())
    return float(np.mean(vals)) if vals else 0.0


DOMAIN_CASES = {
    "all-present": (3, [0, 1, 2, 0, 1, 2, 2, 0]),
    "uneven": (3, [0, 0, 0, 0, 0, 1, 2, 2]),
    "absent-domain": (5, [0, 3, 3, 1, 0, 1, 3, 0]),          # domains 2 and 4 absent
    "one-domain": (4, [2] * 8),
}


@pytest.mark.parametrize("case", sorted(DOMAIN_CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_mmd_and_js_match_numpy(case, seed):
    num_domains, domain = DOMAIN_CASES[case]
    domain = np.array(domain)
    x = _rng(seed).normal(size=(8, 5)).astype(np.float32)
    for bandwidth in (0.7, 2.0):
        got = mmd_penalty(tf.constant(x), tf.constant(domain), num_domains, bandwidth).numpy()
        np.testing.assert_allclose(got, _np_mmd(x, domain, num_domains, bandwidth), atol=1e-5, rtol=0)
    np.testing.assert_allclose(js_penalty(tf.constant(x), tf.constant(domain), num_domains).numpy(),
                               _np_js(x, domain, num_domains), atol=1e-5, rtol=0)
    if case == "one-domain":
        assert mmd_penalty(x, domain, num_domains).numpy() == 0.0 and js_penalty(x, domain, num_domains).numpy() == 0.0
    else:
        assert mmd_penalty(x, domain, num_domains).numpy() > 1e-3 and js_penalty(x, domain, num_domains).numpy() > 1e-4


def test_divergences_are_zero_for_identical_domain_samples_and_accept_b1_domains():
    x = _rng(3).normal(size=(4, 6)).astype(np.float32)
    both = np.concatenate([x, x[::-1]])                       # domain 1 holds the same rows as domain 0
    domain = tf.constant([[0]] * 4 + [[1]] * 4, tf.int64)     # [B, 1] int64 is accepted too
    assert abs(mmd_penalty(both, domain, 2, 1.5).numpy()) < 1e-6
    assert abs(js_penalty(both, domain, 2).numpy()) < 1e-7


@pytest.mark.parametrize("case", ["absent-domain", "one-domain"])
@pytest.mark.parametrize("fn", ["mmd", "js"])
def test_divergence_gradients_are_finite(case, fn):
    num_domains, domain = DOMAIN_CASES[case]
    x = tf.Variable(_rng(4).normal(size=(8, 5)).astype(np.float32))
    with tf.GradientTape() as tape:
        x_dup = tf.concat([x[:4], x[:4]], 0)                  # duplicate rows: distances exactly at the clip
        value = mmd_penalty(x_dup, domain, num_domains) if fn == "mmd" else js_penalty(x_dup, domain, num_domains)
    grad = tape.gradient(value, x).numpy()
    assert np.isfinite(value.numpy()) and np.isfinite(grad).all()
    assert (np.abs(grad).sum() > 0) == (case != "one-domain")


def test_domain_index_out_of_range_is_one_clear_error():
    x = tf.zeros([3, 2])
    for bad in ([0, 1, 3], [0, -1, 1]):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"js_penalty: a domain index is outside \[0, 3\)"):
            js_penalty(x, tf.constant(bad), 3)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        mmd_penalty(x, tf.constant([0, 1, 2]), 3, 0.0)


@pytest.mark.parametrize("kind", ["js", "mmd"])
def test_domain_divergence_layer_adds_weighted_penalty(kind):
    x = _rng(5).normal(size=(6, 4)).astype(np.float32)
    domain = np.array([0, 1, 1, 2, 0, 2])
    layer = DomainDivergence(num_domains=3, kind=kind, weight=0.25, bandwidth=0.8)
    np.testing.assert_array_equal(layer([x, domain]).numpy(), x)
    want = _np_js(x, domain, 3) if kind == "js" else _np_mmd(x, domain, 3, 0.8)
    np.testing.assert_allclose(float(layer.losses[0]), 0.25 * want, atol=1e-6)
    clone = DomainDivergence.from_config(json.loads(json.dumps(layer.get_config())))
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="kind must be one of"):
        DomainDivergence(num_domains=3, kind="kl")


# -- Aspect Gating Fusion ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gating", ["mean", "cls", "domain"])
def test_aspect_gating_fusion_formula(gating):
    rng = _rng(10)
    aspects = [rng.normal(size=(5, 4)), rng.normal(size=(5, 6)), rng.normal(size=(5, 4))]   # id, text (d=6), sparse
    aspects = [a.astype(np.float32) for a in aspects]
    gate_in = [] if gating == "mean" else [rng.normal(size=(5, 3)).astype(np.float32)]
    layer = AspectGatingFusion(gating=gating, units=4, return_gates=True)
    layer(aspects + gate_in)
    _randomise(layer)
    out, gates = layer(aspects + gate_in)
    assert [p is None for p in layer.projections] == [True, False, True]   # only the 6-wide text is projected
    proj = layer.projections[1]
    projected = [aspects[0], aspects[1] @ proj.kernel.numpy() + proj.bias.numpy(), aspects[2]]
    u = np.mean(projected, axis=0) if gating == "mean" else gate_in[0]
    g = _softmax(u @ layer.gate.kernel.numpy() + layer.gate.bias.numpy())
    np.testing.assert_allclose(gates.numpy(), g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), np.einsum("bk,kbd->bd", g, np.stack(projected)), rtol=1e-5, atol=1e-6)


def test_aspect_gating_fusion_bad_arguments():
    with pytest.raises(ValueError, match="gating must be one of"):
        AspectGatingFusion(gating="max")
    with pytest.raises(ValueError, match=r"gating='cls'\): pass a list of aspect vectors followed by the cls gate"):
        AspectGatingFusion(gating="cls")([tf.zeros([2, 3])])


# -- DomainLinearMaps ----------------------------------------------------------------------------------------------
def _np_domain_maps(layer, x, domain):
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    return np.stack([x[b] @ kernel[d] + bias[d] for b, d in enumerate(domain)])


def test_domain_linear_maps_identity_start_and_per_domain_formula():
    x = _rng(11).normal(size=(6, 4)).astype(np.float32)
    domain = np.array([0, 3, 1, 1, 0, 3])
    square = DomainLinearMaps(num_domains=4)
    np.testing.assert_array_equal(square([x, domain]).numpy(), x)          # every domain starts at the identity
    wide = DomainLinearMaps(num_domains=4, units=6)
    np.testing.assert_array_equal(wide([x, domain]).numpy(), np.pad(x, [(0, 0), (0, 2)]))
    _randomise(wide)
    np.testing.assert_allclose(wide([x, domain]).numpy(), _np_domain_maps(wide, x, domain), rtol=1e-5, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"DomainLinearMaps: a domain index is outside \[0, 4\)"):
        wide([x, np.array([0, 4, 1, 1, 0, 3])])


def test_init_domain_from_mean_after_restoring_weights(tmp_path):
    x_in, d_in = keras.Input([3]), keras.Input([], dtype="int32")
    model = keras.Model([x_in, d_in], DomainLinearMaps(num_domains=4, units=2, name="dlm")([x_in, d_in]))
    _randomise(model.get_layer("dlm"))
    model.save_weights(str(tmp_path / "ckpt"))
    x_in2, d_in2 = keras.Input([3]), keras.Input([], dtype="int32")
    restored = keras.Model([x_in2, d_in2], DomainLinearMaps(num_domains=4, units=2, name="dlm")([x_in2, d_in2]))
    restored.load_weights(str(tmp_path / "ckpt"))
    layer = restored.get_layer("dlm")
    before_k, before_b = layer.kernel.numpy(), layer.bias.numpy()
    layer.init_domain_from_mean(3, from_domains=[0, 2])
    k, b = layer.kernel.numpy(), layer.bias.numpy()
    np.testing.assert_array_equal(k[3], (before_k[0] + before_k[2]) / np.float32(2))
    np.testing.assert_array_equal(b[3], (before_b[0] + before_b[2]) / np.float32(2))
    np.testing.assert_array_equal(k[:3], before_k[:3])                      # the trained domains are untouched
    x = _rng(12).normal(size=(2, 3)).astype(np.float32)                    # linear: new map = mean of the two outputs
    outs = [restored([x, np.full(2, d, np.int32)]).numpy() for d in (0, 2, 3)]
    np.testing.assert_allclose(outs[2], (outs[0] + outs[1]) / 2, rtol=1e-5, atol=1e-6)
    layer.init_domain_from_mean(1)                                          # default: every other domain
    np.testing.assert_allclose(layer.kernel.numpy()[1], k[[0, 2, 3]].mean(0), rtol=1e-6)
    layer.init_domain_identity(2)
    np.testing.assert_array_equal(layer.kernel.numpy()[2], np.eye(3, 2))
    np.testing.assert_array_equal(layer.bias.numpy()[2], np.zeros(2))


def test_init_domain_bad_arguments():
    layer = DomainLinearMaps(num_domains=3)
    with pytest.raises(RuntimeError, match="before initialising a domain"):
        layer.init_domain_from_mean(2)
    layer([tf.zeros([1, 2]), tf.zeros([1], tf.int32)])
    with pytest.raises(ValueError, match=r"domain 5 is outside \[0, 3\)"):
        layer.init_domain_from_mean(5)
    with pytest.raises(ValueError, match="exclude the new domain 2"):
        layer.init_domain_from_mean(2, from_domains=[0, 2])
    with pytest.raises(ValueError, match="must be non-empty"):
        layer.init_domain_from_mean(2, from_domains=[])


# -- STAR ----------------------------------------------------------------------------------------------------------
def test_star_effective_kernel_and_forward():
    x = _rng(13).normal(size=(5, 4)).astype(np.float32)
    domain = np.array([2, 0, 1, 2, 0])
    layer = STARTopology(num_domains=3, units=(3, 2), activation="relu")
    layer([x, domain])
    _randomise(layer)
    for level in range(2):
        for d in range(3):
            want = layer.shared_kernels[level].numpy() * layer.domain_kernels[level].numpy()[d]
            np.testing.assert_array_equal(layer.effective_kernel(level, d).numpy(), want)
    h = x
    for level in range(2):
        W, b = layer.shared_kernels[level].numpy(), layer.shared_biases[level].numpy()
        Wd, bd = layer.domain_kernels[level].numpy(), layer.domain_biases[level].numpy()
        h = _relu(np.stack([h[i] @ (W * Wd[d]) + b + bd[d] for i, d in enumerate(domain)]))
    out = layer([x, domain]).numpy()
    assert out.shape == (5, 2) and (out > 0).any()
    np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-6)


def test_star_partitioned_norm_batch_and_moving_statistics():
    x = _rng(14).normal(size=(6, 3)).astype(np.float32) * 3 + 1
    domain = np.array([0, 0, 2, 2, 2, 0])                                   # domain 1 absent
    layer = STARTopology(num_domains=3, units=(2,), activation="linear", partitioned_norm=True, norm_momentum=0.9)
    layer([x, domain])
    _randomise(layer)
    mm0, mv0 = np.zeros([3, 3], np.float32), np.ones([3, 3], np.float32)
    layer.moving_mean.assign(mm0)
    layer.moving_var.assign(mv0)

    def forward(mean, var):
        g, bt = layer.gamma.numpy(), layer.beta.numpy()
        gd, bd = layer.domain_gamma.numpy(), layer.domain_beta.numpy()
        z = np.stack([g * gd[d] * (x[i] - mean[d]) / np.sqrt(var[d] + 1e-3) + bt + bd[d] for i, d in enumerate(domain)])
        W, Wd = layer.shared_kernels[0].numpy(), layer.domain_kernels[0].numpy()
        b, bdd = layer.shared_biases[0].numpy(), layer.domain_biases[0].numpy()
        return np.stack([z[i] @ (W * Wd[d]) + b + bdd[d] for i, d in enumerate(domain)])

    mean = np.stack([x[domain == d].mean(0) if (domain == d).any() else np.zeros(3) for d in range(3)])
    var = np.stack([x[domain == d].var(0) if (domain == d).any() else np.zeros(3) for d in range(3)])
    np.testing.assert_allclose(layer([x, domain], training=True).numpy(), forward(mean, var), rtol=1e-4, atol=1e-5)
    want_mm, want_mv = 0.9 * mm0 + 0.1 * mean, 0.9 * mv0 + 0.1 * var
    want_mm[1], want_mv[1] = mm0[1], mv0[1]                                  # the absent domain keeps its averages
    np.testing.assert_allclose(layer.moving_mean.numpy(), want_mm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_var.numpy(), want_mv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer([x, domain], training=False).numpy(), forward(want_mm, want_mv), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), want_mm, rtol=1e-5, atol=1e-6)   # inference: no update


# -- PLE -----------------------------------------------------------------------------------------------------------
def _np_ple(layer, x):
    def mlp(layers, h):
        for lyr in layers:
            h = _relu(h @ lyr.kernel.numpy() + lyr.bias.numpy())
        return h

    def gate(lyr, h):
        return _softmax(h @ lyr.kernel.numpy() + lyr.bias.numpy())
    task_in, shared_in = [x] * layer.num_tasks, x
    for lv in range(layer.num_levels):
        shared = [mlp(e, shared_in) for e in layer.shared_experts[lv]]
        own = [[mlp(e, task_in[t]) for e in experts] for t, experts in enumerate(layer.task_experts[lv])]
        mix = [np.einsum("be,ebd->bd", gate(layer.task_gates[lv][t], task_in[t]), np.stack(own[t] + shared))
               for t in range(layer.num_tasks)]
        if lv < layer.num_levels - 1:
            every = [o for outs in own for o in outs] + shared
            shared_in = np.einsum("be,ebd->bd", gate(layer.shared_gates[lv], shared_in), np.stack(every))
        task_in = mix
    return task_in


def test_ple_shapes_and_formula():
    x = _rng(15).normal(size=(4, 5)).astype(np.float32)
    layer = PLE(num_tasks=3, num_levels=2, num_shared_experts=2, num_task_experts=1, expert_units=(6, 3))
    outs = layer(x)
    assert [tuple(o.shape) for o in outs] == [(4, 3)] * 3
    assert [g.units for g in layer.task_gates[0]] == [3, 3, 3] and layer.shared_gates[0].units == 5
    assert len(layer.shared_gates) == 1                                     # no shared gate at the last level
    _randomise(layer)
    for got, want in zip(layer(x), _np_ple(layer, x)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="must be >= 1"):
        PLE(num_tasks=0)


# -- serialisation -------------------------------------------------------------------------------------------------
def _layer_cases():
    rng = _rng(16)
    x, dom = rng.normal(size=(4, 3)).astype(np.float32), np.array([1, 0, 2, 1], np.int32)
    txt, cls = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    return {
        "agf": (AspectGatingFusion(gating="cls", units=3, name="agf"), [x, txt, cls]),
        "dlm": (DomainLinearMaps(num_domains=3, units=2, kernel_initializer="glorot_uniform", name="dlm"), [x, dom]),
        "star": (STARTopology(num_domains=3, units=(4, 2), activation="tanh", partitioned_norm=True, name="star"),
                 [x, dom]),
        "ple": (PLE(num_tasks=2, num_levels=3, num_shared_experts=1, num_task_experts=2, expert_units=(3,),
                    name="ple"), x),
        "div": (DomainDivergence(num_domains=3, kind="mmd", weight=0.5, bandwidth=2.0, name="div"), [x, dom]),
    }


@pytest.mark.parametrize("key", ["agf", "dlm", "star", "ple", "div"])
def test_config_round_trip(key):
    layer, inputs = _layer_cases()[key]
    layer(inputs)
    _randomise(layer)
    want = layer(inputs)
    blob = json.loads(json.dumps(keras.layers.serialize(layer)))
    assert blob["registered_name"] == f"tfrec_zoo>{type(layer).__name__}"
    for clone in (type(layer).from_config(layer.get_config()), keras.layers.deserialize(blob)):
        clone(inputs)
        clone.set_weights(layer.get_weights())
        assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
        for g, w in zip(tf.nest.flatten(clone(inputs)), tf.nest.flatten(want)):
            _assert_close(g.numpy(), w.numpy(), rtol=1e-6)


def test_saved_model_round_trip(tmp_path):
    ids, txt, sparse = keras.Input([4], name="id"), keras.Input([6], name="txt"), keras.Input([4], name="sparse")
    dom = keras.Input([], dtype="int32", name="domain")
    dom_emb = keras.layers.Embedding(3, 2, name="dom_emb")(dom)
    fused = AspectGatingFusion(gating="domain", units=4, name="agf")([ids, txt, sparse, dom_emb])
    shared = DomainLinearMaps(num_domains=3, name="dlm")([fused, dom])
    shared = DomainDivergence(num_domains=3, kind="js", weight=0.3, name="div")([shared, dom])
    star = STARTopology(num_domains=3, units=(5,), partitioned_norm=True, name="star")([shared, dom])
    towers = PLE(num_tasks=2, num_levels=2, expert_units=(3,), name="ple")(star)
    model = keras.Model([ids, txt, sparse, dom], towers)
    _randomise(model)
    rng = _rng(17)
    feed = [rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 6)).astype(np.float32),
            rng.normal(size=(6, 4)).astype(np.float32), np.array([0, 1, 2, 2, 1, 0], np.int32)]
    want = model(feed, training=False)
    model.save(str(tmp_path / "sm"), save_format="tf")
    loaded = keras.models.load_model(str(tmp_path / "sm"))
    assert type(loaded.get_layer("star")) is STARTopology
    got = loaded(feed, training=False)
    for g, w in zip(got, want):
        _assert_close(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
    _assert_close(float(sum(loaded.losses)), float(sum(model.losses)), rtol=1e-5)
