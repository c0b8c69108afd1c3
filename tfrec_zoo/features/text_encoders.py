"""The text encoders (tfrec_zoo.text) a feature spec may name, with the vector size each gives: TensorFlow-free, so validating a
spec does not import TensorFlow (seconds). `tfrec_zoo.text.ENCODERS` holds their factories; a test keeps the two
in step."""
from __future__ import annotations

#: encoder name (`TextEncoder.name`) -> the floats per text it gives (`TextEncoder.dim`)
ENCODER_DIMS: dict[str, int] = {"all-MiniLM-L6-v2": 384,
                                "all-MiniLM-L6-v2/cls": 384}   # the [CLS]-position token output of the same model

#: encoders whose vector is a token-level output at the [CLS] position (S&R's [CLS]-gating reads these)
CLS_ENCODERS: frozenset[str] = frozenset({"all-MiniLM-L6-v2/cls"})
