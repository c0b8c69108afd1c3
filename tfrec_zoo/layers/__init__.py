"""Reusable tf_keras layers (serialisable under the `tfrec_zoo` package name)."""
from .feature_layers import DenseTransform, LengthMask, MaskedPooling

__all__ = ["DenseTransform", "LengthMask", "MaskedPooling"]
