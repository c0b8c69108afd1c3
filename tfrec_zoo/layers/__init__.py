"""Reusable tf_keras layers (serialisable under the `tfrec_zoo` package name)."""
from .attention import TargetAttention
from .feature_layers import DenseTransform, FrozenTable, LengthMask, MaskedPooling, PoolSteps, ValidSteps
from .divergence import DomainDivergence, js_penalty, mmd_penalty
from .domain_select import DomainSelect
from .interaction import FMInteraction, MixtureOfExperts
from .multi_interest import (AdaptiveInterestSelection, CapsuleInterests, SelfAttentiveInterests, collision_mask,
                             mask_collisions, multi_interest_scores, nearest_prototype, prototype_contrastive_loss)
from .multidomain import (PLE, AspectGatingFusion, DomainLinearMaps, DomainRowCounter, RandomTextVectors,
                          STARTopology)

__all__ = ["AdaptiveInterestSelection", "AspectGatingFusion", "CapsuleInterests", "DenseTransform", "DomainDivergence",
           "DomainLinearMaps", "DomainRowCounter", "DomainSelect", "FMInteraction", "FrozenTable", "LengthMask",
           "MaskedPooling", "MixtureOfExperts", "PLE", "PoolSteps", "RandomTextVectors", "STARTopology",
           "SelfAttentiveInterests", "TargetAttention", "ValidSteps", "collision_mask", "js_penalty", "mask_collisions",
           "mmd_penalty", "multi_interest_scores", "nearest_prototype", "prototype_contrastive_loss"]
