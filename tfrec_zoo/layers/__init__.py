"""Reusable tf_keras layers (serialisable under the `tfrec_zoo` package name)."""
from .attention import TargetAttention
from .feature_layers import DenseTransform, FrozenTable, LengthMask, MaskedPooling, PoolSteps, ValidSteps
from .divergence import DomainDivergence, js_penalty, mmd_penalty
from .domain_select import DomainSelect
from .interaction import FMInteraction, MixtureOfExperts
from .multidomain import (PLE, AspectGatingFusion, DomainLinearMaps, DomainRowCounter, RandomTextVectors,
                          STARTopology)

__all__ = ["AspectGatingFusion", "DenseTransform", "DomainDivergence", "DomainLinearMaps", "DomainRowCounter",
           "DomainSelect", "FMInteraction", "FrozenTable", "LengthMask", "MaskedPooling", "MixtureOfExperts", "PLE",
           "PoolSteps", "RandomTextVectors", "STARTopology", "TargetAttention", "ValidSteps", "js_penalty",
           "mmd_penalty"]
