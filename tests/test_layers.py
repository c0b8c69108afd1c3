"""Serialisation round trips of every keras layer in tfrec_zoo/layers, and MMoE's exact mixing.

Each case builds a layer with non-default arguments, calls it on small seeded inputs, gives its float weights seeded
random values (so zero / identity initialisers cannot hide a missing weight), then rebuilds it from `get_config`
(direct and through JSON + `keras.layers.serialize` / `deserialize`), copies the weights and checks the clone's
config and output.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.layers import (attention, divergence, domain_select, feature_layers, interaction, lifelong,
                              multi_interest, multidomain, quantization)
from tfrec_zoo.layers.attention import TargetAttention
from tfrec_zoo.layers.feature_layers import (DenseTransform, FrozenTable, LengthMask, MaskedPooling, PoolSteps,
                                             ValidSteps)
from tfrec_zoo.layers.interaction import FMInteraction, MixtureOfExperts
from tfrec_zoo.layers.lifelong import (GSUScores, ModalityGate, ModalityTables, MultiHeadTargetAttention, NonEmpty,
                                       PairFusion, QueryDropout)
from tfrec_zoo.layers.divergence import DomainDivergence
from tfrec_zoo.layers.domain_select import DomainSelect
from tfrec_zoo.layers.multi_interest import AdaptiveInterestSelection, CapsuleInterests, SelfAttentiveInterests
from tfrec_zoo.layers.multidomain import (PLE, AspectGatingFusion, DomainLinearMaps, DomainRowCounter,
                                          RandomTextVectors, STARTopology)
from tfrec_zoo.layers.quantization import PQScores, SimHash

LAYER_MODULES = (attention, divergence, domain_select, feature_layers, interaction, lifelong, multi_interest,
                 multidomain, quantization)
SEED = 123


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(rng, *shape):
    return tf.constant(rng.normal(size=shape).astype(np.float32))


@dataclass
class Case:
    layer: keras.layers.Layer
    inputs: object
    expect: dict                                    # config entries the non-default arguments must appear as
    call_kwargs: dict = field(default_factory=dict)
    prepare: Callable | None = None                 # after the first call: load non-weight state (e.g. PQ codes)
    check: Callable | None = None                   # extra assertions on the original's output


# -- one factory per layer (and per distinct code path worth serialising) ---------------------------------------------
def _target_attention():
    rng = _rng(1)
    mask = tf.constant([[True, True, True, False, False], [True, False, False, False, False]])
    return Case(TargetAttention(units=(6, 3), activation="relu", normalization="softmax", name="ta"),
                [_f32(rng, 2, 4), _f32(rng, 2, 5, 4), mask],
                {"units": [6, 3], "activation": "relu", "normalization": "softmax", "name": "ta"})


def _length_mask():
    return Case(LengthMask(max_len=5, name="lm"), tf.constant([0, 2, 7]), {"max_len": 5})


def _valid_steps():
    rng = _rng(2)
    return Case(ValidSteps(name="vs"), [_f32(rng, 2, 4), tf.constant([[True, False, True, True], [False] * 4])],
                {"name": "vs"})


def _masked_pooling():
    rng = _rng(3)
    mask = tf.constant([[True, True, False], [False, False, False], [True, True, True]])
    return Case(MaskedPooling(combiner="sqrtn", name="mp"),
                [_f32(rng, 3, 3, 4), mask, tf.constant(rng.uniform(0.5, 2.0, (3, 3)).astype(np.float32))],
                {"combiner": "sqrtn"})


def _dense_transform():
    x = np.array([[0.0, 1.5, 9.0, np.nan], [-2.0, np.inf, 3.0, 0.25]], np.float32)
    return Case(DenseTransform("log1p", {"log1p_mean": 0.3, "log1p_std": 2.0, "mean": 1.0, "std": 3.0,
                                         "bounds": (0.0, 9.0)}, name="dt"),
                tf.constant(x),
                {"normalization": "log1p",
                 "stats": {"log1p_mean": 0.3, "log1p_std": 2.0, "mean": 1.0, "std": 3.0, "bounds": [0.0, 9.0]}})


def _frozen_table():
    values = _rng(4).normal(size=(5, 3)).astype(np.float32)
    # the values are not in the config (they are a weight): the clone is built with zeros and gets them by set_weights
    return Case(FrozenTable(rows=5, width=3, values=values, name="ft"), tf.constant([[0, 4], [2, 2]]),
                {"rows": 5, "width": 3, "value_dtype": "float32"})


def _frozen_table_int():
    values = np.array([3, 1, 4, 1, 5, 9], np.int32)
    return Case(FrozenTable(rows=6, value_dtype="int32", values=values, name="ft_int"), tf.constant([5, 0, 2]),
                {"rows": 6, "width": None, "value_dtype": "int32"},
                check=lambda layer, out: np.testing.assert_array_equal(out.numpy(), [9, 3, 4]))


def _pool_steps():
    rng = _rng(5)
    return Case(PoolSteps(name="ps"), [_f32(rng, 2, 3, 4, 2), tf.constant([[2, 0, 4], [1, 3, 4]])], {"name": "ps"})


def _fm_interaction():
    return Case(FMInteraction(name="fm"), _f32(_rng(6), 2, 3, 4), {"name": "fm"})


def _mixture_of_experts():
    return Case(MixtureOfExperts(num_experts=3, expert_units=(5, 4), num_tasks=2, dropout=0.25, name="moe"),
                _f32(_rng(7), 4, 6),
                {"num_experts": 3, "expert_units": [5, 4], "num_tasks": 2, "dropout": 0.25})


def _modality_gate():
    rng = _rng(8)
    return Case(ModalityGate(name="gate"), [_f32(rng, 2, 4) for _ in range(3)], {"name": "gate"})


def _pair_fusion():
    rng = _rng(9)
    return Case(PairFusion(alpha=0.3, name="pf"), [_f32(rng, 2, 4), _f32(rng, 2, 4)], {"alpha": 0.3})


def _gsu(kind: str):
    def make():
        rng = _rng(10)
        mask = tf.constant([[True, True, True, True, False], [True, True, False, False, False]])
        if kind == "qin":
            inputs = [_f32(rng, 2, 3), _f32(rng, 2, 5, 3), _f32(rng, 2, 4), _f32(rng, 2, 5, 4), mask]
        else:
            inputs = [_f32(rng, 2, 4), _f32(rng, 2, 5, 4), mask]
        return Case(GSUScores(kind, bits=24, first_k=2, seed=3, name=f"gsu_{kind}"), inputs,
                    {"kind": kind, "bits": 24, "first_k": 2, "seed": 3})
    return make


def _mhta():
    rng = _rng(11)
    mask = tf.constant([[True, True, True, True, False], [True, True, True, False, False]])
    return Case(MultiHeadTargetAttention(heads=3, top_k=2, name="mhta"), [_f32(rng, 2, 4), _f32(rng, 2, 5, 4), mask],
                {"heads": 3, "top_k": 2, "pq": None})


def _mhta_pq():
    rng = _rng(12)
    pq = {"codebook_shape": [2, 2, 4, 2], "item_rows": 6, "query_rows": 5, "alpha": 0.4}
    mask = tf.constant([[True, True, True, True, False], [True, True, True, False, False]])
    inputs = [_f32(rng, 2, 4), _f32(rng, 2, 5, 4), mask, tf.constant(rng.integers(0, 6, (2, 5))),
              tf.constant(rng.integers(0, 5, (2, 5))), tf.constant([[1.0, 0.0, 1.0, 1.0, 0.0]] * 2)]

    def prepare(layer):     # PQ codes are int weights: give them non-zero values (the float ones are randomised)
        layer.set_pq(rng.normal(size=(2, 2, 4, 2)).astype(np.float32), rng.integers(0, 4, (6, 2)),
                     rng.integers(0, 4, (5, 2)))
    return Case(MultiHeadTargetAttention(heads=2, top_k=3, pq=pq, name="mhta_pq"), inputs,
                {"heads": 2, "top_k": 3, "pq": pq}, prepare=prepare)


def _non_empty(kind: str):
    def make():
        ids = tf.constant([["a", ""], ["", "b"]]) if kind == "str" else tf.constant([[3, 0], [0, 0]], tf.int64)
        want = [[1.0, 0.0], [0.0, 1.0]] if kind == "str" else [[1.0, 0.0], [0.0, 0.0]]
        return Case(NonEmpty(name=f"ne_{kind}"), ids, {"name": f"ne_{kind}"},
                    check=lambda layer, out: np.testing.assert_array_equal(out.numpy(), want))
    return make


def _query_dropout():
    def check(layer, out):          # the training path ran: some queries were emptied, some kept
        assert 0 < out.numpy().sum() < 64
    return Case(QueryDropout(rate=0.5, name="qd"), tf.ones([64]), {"rate": 0.5}, {"training": True}, check=check)


def _pq_scores():
    rng = _rng(13)
    books = rng.normal(size=(2, 2, 4, 3)).astype(np.float32)
    # the codebooks are not in the config (a non-trainable weight): the clone starts at zeros, set_weights fills it
    return Case(PQScores(books, name="pq"),
                [_f32(rng, 3, 6), tf.constant(rng.integers(0, 4, (3, 5, 2, 2)).astype(np.uint8)),
                 tf.constant([0.7, 0.3])],
                {"codebook_shape": [2, 2, 4, 3]})


def _simhash():
    def check(layer, out):          # packed: 16 bits -> 2 bytes
        assert out.dtype == tf.uint8 and out.shape == (3, 2, 2)
    return Case(SimHash(num_bits=16, seed=5, packed=True, name="sh"), _f32(_rng(14), 3, 2, 6),
                {"num_bits": 16, "seed": 5, "packed": True}, check=check)


def _agf(gating: str):
    def make():
        rng = _rng(15)
        aspects = [_f32(rng, 3, 4), _f32(rng, 3, 6), _f32(rng, 3, 4)]
        gate = [] if gating == "mean" else [_f32(rng, 3, 5)]
        return Case(AspectGatingFusion(gating, units=4, return_gates=True, name=f"agf_{gating}"), aspects + gate,
                    {"gating": gating, "units": 4, "return_gates": True})
    return make


_DOMAINS = tf.constant([0, 2, 1, 2])


def _domain_linear_maps():
    return Case(DomainLinearMaps(3, units=5, kernel_initializer="glorot_uniform", name="dlm"),
                [_f32(_rng(16), 4, 6), _DOMAINS], {"num_domains": 3, "units": 5, "kernel_initializer": "glorot_uniform"})


def _ple():
    return Case(PLE(num_tasks=2, num_levels=2, num_shared_experts=2, expert_units=(6, 4), name="ple"),
                _f32(_rng(17), 4, 5), {"num_tasks": 2, "num_levels": 2, "num_shared_experts": 2, "expert_units": [6, 4]})


def _star():
    # inference path: per-domain moving statistics (randomised like every float weight) normalise the input
    return Case(STARTopology(3, units=(6, 4), partitioned_norm=True, name="star"), [_f32(_rng(18), 4, 5), _DOMAINS],
                {"num_domains": 3, "units": [6, 4], "partitioned_norm": True}, {"training": False})


def _domain_divergence():
    def check(layer, out):          # the penalty went to the layer's losses
        assert len(layer.losses) == 1 and float(layer.losses[0]) > 0
    return Case(DomainDivergence(3, kind="mmd", weight=0.5, bandwidth=2.0, name="dd"), [_f32(_rng(19), 4, 5), _DOMAINS],
                {"num_domains": 3, "kind": "mmd", "weight": 0.5, "bandwidth": 2.0}, check=check)


def _domain_row_counter():
    return Case(DomainRowCounter(3, name="drc"), _DOMAINS, {"num_rows": 3})


def _domain_select():
    rng = _rng(22)
    branches = [_f32(rng, 4, 3) for _ in range(3)]
    want = np.stack([b.numpy() for b in branches], 1)[np.arange(4), _DOMAINS.numpy()]
    return Case(DomainSelect(name="ds"), [*branches, _DOMAINS], {"name": "ds"},
                check=lambda layer, out: np.testing.assert_array_equal(out.numpy(), want))


def _random_text_vectors():
    return Case(RandomTextVectors(table_rows=64, seed=4, name="rtv"), _f32(_rng(21), 3, 6),
                {"table_rows": 64, "seed": 4})


_HISTORY_MASK = tf.constant([[True, True, True, False], [True, False, True, True], [False] * 4])


def _self_attentive_interests():
    return Case(SelfAttentiveInterests(num_interests=3, hidden_units=5, name="sai"),
                [_f32(_rng(23), 3, 4, 6), _HISTORY_MASK], {"num_interests": 3, "hidden_units": 5})


def _capsule_interests():
    return Case(CapsuleInterests(num_interests=3, iterations=2, units=5, seed=7, name="ci"),
                [_f32(_rng(24), 3, 4, 6), _HISTORY_MASK], {"num_interests": 3, "iterations": 2, "units": 5, "seed": 7})


def _adaptive_interest_selection():
    def check(layer, out):          # inference: a hard, non-increasing 0/1 mask with slot 0 always on
        m = out.numpy()
        assert set(np.unique(m)) <= {0.0, 1.0} and (m[:, 0] == 1).all() and (np.diff(m, axis=1) <= 0).all()
    return Case(AdaptiveInterestSelection(max_interests=4, hidden_units=(6, 5), temperature=0.5, name="ais"),
                _f32(_rng(25), 5, 3), {"max_interests": 4, "hidden_units": [6, 5], "temperature": 0.5},
                {"training": False}, check=check)


CASES = {
    "AspectGatingFusion-mean": _agf("mean"), "AspectGatingFusion-domain": _agf("domain"),
    "DomainLinearMaps": _domain_linear_maps, "PLE": _ple, "STARTopology": _star,
    "DomainDivergence": _domain_divergence, "DomainRowCounter": _domain_row_counter,
    "RandomTextVectors": _random_text_vectors, "DomainSelect": _domain_select,
    "TargetAttention": _target_attention, "LengthMask": _length_mask, "ValidSteps": _valid_steps,
    "MaskedPooling": _masked_pooling, "DenseTransform": _dense_transform, "FrozenTable": _frozen_table,
    "FrozenTable-int": _frozen_table_int, "PoolSteps": _pool_steps, "FMInteraction": _fm_interaction,
    "MixtureOfExperts": _mixture_of_experts, "ModalityGate": _modality_gate, "PairFusion": _pair_fusion,
    "GSUScores-sim": _gsu("sim"), "GSUScores-eta": _gsu("eta"), "GSUScores-qin": _gsu("qin"),
    "MultiHeadTargetAttention": _mhta, "MultiHeadTargetAttention-pq": _mhta_pq,
    "NonEmpty-str": _non_empty("str"), "NonEmpty-int": _non_empty("int"), "QueryDropout": _query_dropout,
    "PQScores": _pq_scores, "SimHash": _simhash,
    "SelfAttentiveInterests": _self_attentive_interests, "CapsuleInterests": _capsule_interests,
    "AdaptiveInterestSelection": _adaptive_interest_selection,
}
# ModalityTables holds references to the model's own (shared) Embedding layers, which a config cannot carry:
# tested separately below (config + those references rebuild it; SavedModel serving).
SEPARATE = {"ModalityTables"}


def _call(layer, case):
    tf.random.set_seed(SEED)        # QueryDropout draws: the same op seeds for the original and the clones
    return layer(case.inputs, **case.call_kwargs)


def _randomise_float_weights(layer, seed: int = 99):
    rng = _rng(seed)
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                       for w in layer.get_weights()])


def _assert_same(got, want):
    if isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)


def _layer_classes():
    return {name: cls for mod in LAYER_MODULES for name, cls in inspect.getmembers(mod, inspect.isclass)
            if cls.__module__ == mod.__name__ and issubclass(cls, keras.layers.Layer)}


def test_every_layer_class_is_registered_and_covered():
    classes = _layer_classes()
    assert len(classes) >= 18
    for name, cls in classes.items():
        assert keras.utils.get_registered_name(cls) == f"tfrec_zoo>{name}", name
        assert keras.utils.get_registered_object(f"tfrec_zoo>{name}") is cls, name
    covered = {key.split("-")[0] for key in CASES} | SEPARATE
    assert covered == set(classes), f"layers without a round-trip test: {sorted(set(classes) - covered)}"


@pytest.mark.parametrize("key", sorted(CASES))
def test_layer_config_round_trip(key):
    case = CASES[key]()
    layer = case.layer
    _call(layer, case)                                                  # build
    if case.prepare:
        case.prepare(layer)
    _randomise_float_weights(layer)
    want = _call(layer, case)
    if case.check:
        case.check(layer, want)
    cfg = layer.get_config()
    for k, v in case.expect.items():
        assert cfg[k] == v, (k, cfg[k], v)

    direct = type(layer).from_config(cfg)
    blob = json.loads(json.dumps(keras.layers.serialize(layer)))        # what a saved model's config holds
    name = type(layer).__name__
    assert blob["class_name"] == name and blob.get("registered_name") == f"tfrec_zoo>{name}"
    revived = keras.layers.deserialize(blob)
    for clone in (direct, revived):
        assert type(clone) is type(layer)
        _call(clone, case)                                              # build
        clone.set_weights(layer.get_weights())
        assert clone.get_config() == cfg
        _assert_same(_call(clone, case), want)


def _modality_tables_parts():
    rng = _rng(20)
    emb = keras.layers.Embedding(4, 3, name="emb_item")
    emb.build((None,))
    attr = keras.layers.Embedding(5, 2, name="emb_genre")
    attr.build((None,))
    frozen = {"txt": rng.normal(size=(4, 6)).astype(np.float32), "genre": rng.integers(0, 5, (4, 2)).astype(np.int32),
              "genre_len": np.array([0, 1, 2, 2], np.int32)}
    kwargs = dict(modalities=[("id", None), ("dense", "txt"), ("multi_hot", "genre")], dim=3,
                  modality_projection=True, n_rows=4, frozen_parts=("gproj",), name="mt")
    rows = [tf.constant([[0, 1, 3], [2, 2, 1]]), tf.constant([3, 0])]
    return emb, attr, frozen, kwargs, rows


def test_modality_tables_config_plus_shared_layers_round_trip():
    # ModalityTables shares the model's Embedding layers (id_embedding, attr_embeddings) and its side tables are
    # weights, so its config holds everything else: config + those references rebuild it.
    emb, attr, frozen, kwargs, rows = _modality_tables_parts()
    layer = ModalityTables(id_embedding=emb, attr_embeddings={"genre": attr}, frozen=frozen, **kwargs)
    layer(rows)
    _randomise_float_weights(layer)
    want = layer(rows)
    assert len(want) == 2 + 3
    cfg = layer.get_config()
    assert {k: cfg[k] for k in ("modalities", "dim", "modality_projection", "n_rows", "frozen_parts", "cached")} == {
        "modalities": [("id", None), ("dense", "txt"), ("multi_hot", "genre")], "dim": 3, "modality_projection": True,
        "n_rows": 4, "frozen_parts": ["gproj"], "cached": False}
    cfg = json.loads(json.dumps(cfg))
    zeros = {k: np.zeros_like(v) for k, v in frozen.items()}          # shapes only: the values come by set_weights
    clone = ModalityTables.from_config({**cfg, "id_embedding": emb, "attr_embeddings": {"genre": attr},
                                        "frozen": zeros})
    clone(rows)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    assert [w.trainable for w in clone.weights] == [w.trainable for w in layer.weights]   # frozen_parts survived
    _assert_same(clone(rows), want)


def test_modality_tables_saved_model_serves_the_same(tmp_path):
    # not revivable by keras.models.load_model (from_config has no Embedding layers to share): the export path is
    # tf.saved_model, whose traced functions and variables must reproduce the outputs
    emb, attr, frozen, kwargs, rows = _modality_tables_parts()
    hist, target = keras.Input((3,), dtype=tf.int32, name="hist"), keras.Input((), dtype=tf.int32, name="target")
    layer = ModalityTables(id_embedding=emb, attr_embeddings={"genre": attr}, frozen=frozen, **kwargs)
    outs = layer([hist, target])                                       # 2 fused + 3 per-modality tensors
    model = keras.Model([hist, target], {f"out{i}": keras.layers.Activation("linear", name=f"out{i}")(t)
                                         for i, t in enumerate(outs)})   # named: the signature's output keys
    _randomise_float_weights(layer)
    want = model(rows)
    model.save(str(tmp_path / "sm"))
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    out = served(hist=rows[0], target=rows[1])
    assert set(out) == set(want) and len(want) == 5
    for k in want:
        _assert_same(out[k].numpy(), want[k].numpy())


def test_frozen_table_values_survive_keras_load_model(tmp_path):
    # the config holds only the table's shape: the values must come back from the SavedModel's variables
    values = _rng(21).normal(size=(5, 3)).astype(np.float32)
    rows = keras.Input((2,), dtype=tf.int32)
    model = keras.Model(rows, FrozenTable(5, 3, values=values, name="ft")(rows))
    x = np.array([[4, 0], [1, 3]], np.int32)
    model.save(str(tmp_path / "sm"))
    loaded = keras.models.load_model(str(tmp_path / "sm"), compile=False)
    assert isinstance(loaded.get_layer("ft"), FrozenTable)
    _assert_same(loaded(x).numpy(), values[x])


def test_mixture_of_experts_exact_mixing():
    moe = MixtureOfExperts(num_experts=3, expert_units=(3, 2), num_tasks=2, dropout=0.5)
    x = np.array([[1.0, -0.5], [0.2, 0.4], [-1.0, 2.0], [0.0, 0.0]], np.float32)
    moe(tf.constant(x))
    rng = _rng(30)
    experts = [[(rng.normal(size=(2, 3)).round(1), rng.normal(size=3).round(1)),
                (rng.normal(size=(3, 2)).round(1), rng.normal(size=2).round(1))] for _ in range(3)]
    gates = [(rng.normal(size=(2, 3)).round(1), rng.normal(size=3).round(1)) for _ in range(2)]
    for layers, values in zip(moe.experts, experts):
        for layer, (kernel, bias) in zip(layers, values):
            layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    for layer, (kernel, bias) in zip(moe.gates, gates):
        layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])

    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    h = np.stack([relu(relu(x @ k1 + b1) @ k2 + b2) for (k1, b1), (k2, b2) in experts], axis=1)   # [B, E, d]
    outs = moe(tf.constant(x), training=False)                          # inference: no dropout
    assert len(outs) == 2
    for out, (kernel, bias) in zip(outs, gates):
        logits = x @ kernel + bias
        g = np.exp(logits - logits.max(1, keepdims=True))
        g /= g.sum(1, keepdims=True)
        want = np.einsum("be,bed->bd", g, h)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs[0].numpy(), outs[1].numpy())           # the tasks' gates really differ
