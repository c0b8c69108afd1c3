"""The text encoders (tfrec_zoo.text) a feature spec may name, with the vector size each gives: TensorFlow-free, so validating a
spec does not import TensorFlow (seconds). `tfrec_zoo.text.ENCODERS` holds their factories; a test keeps the two
in step."""
from __future__ import annotations

#: encoder name (`TextEncoder.name`) -> the floats per text it gives (`TextEncoder.dim`)
ENCODER_DIMS: dict[str, int] = {"all-MiniLM-L6-v2": 384}
