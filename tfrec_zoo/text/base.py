"""The one interface every text encoder in tfrec_zoo implements."""
from __future__ import annotations

import abc
from typing import Sequence

import numpy as np


class TextEncoder(abc.ABC):
    """Maps a list of strings to float32 unit vectors, one row per input, in input order.

    Contract (every implementation, cached or not):
      * `encode(texts)` returns a C-contiguous float32 array of shape [len(texts), dim].
      * The empty string "" means "no text" in this project (an empty query, an item without a description) and
        encodes to an all-zero vector rather than to the model's vector for an empty sentence, so that "no text"
        contributes nothing when vectors are summed or dotted. Encoders whose tokenizer yields no token at all for
        a text (e.g. whitespace only) treat it the same way.
      * Every other row is L2-normalised, so cosine similarity is the plain dot product.
    """

    #: stable identifier; it is part of every cache key, so two encoders that differ in output must differ in name
    name: str
    #: length of each output vector
    dim: int

    @abc.abstractmethod
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Encode `texts` ([n] strings) into a float32 [n, dim] array, `batch_size` texts per model call."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def check_texts(texts: Sequence[str], batch_size: int) -> list[str]:
    """Validate `encode` arguments early, with a message that names the bad element (TF's would not)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("encode() takes a list of strings, not a single string; wrap it: encode([text])")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str (use '' for 'no text')")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return texts
