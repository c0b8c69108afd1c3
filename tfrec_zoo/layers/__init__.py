"""Reusable tf_keras layers (serialisable under the `tfrec_zoo` package name)."""
from .attention import TargetAttention
from .feature_layers import DenseTransform, FrozenTable, LengthMask, MaskedPooling, PoolSteps, ValidSteps
from .interaction import FMInteraction, MixtureOfExperts

__all__ = ["DenseTransform", "FMInteraction", "FrozenTable", "PoolSteps", "LengthMask", "MaskedPooling", "MixtureOfExperts", "TargetAttention",
           "ValidSteps"]
