"""Reusable tf_keras layers (serialisable under the `tfrec_zoo` package name)."""
from .attention import TargetAttention
from .feature_layers import DenseTransform, LengthMask, MaskedPooling, ValidSteps
from .interaction import FMInteraction, MixtureOfExperts

__all__ = ["DenseTransform", "FMInteraction", "LengthMask", "MaskedPooling", "MixtureOfExperts", "TargetAttention",
           "ValidSteps"]
