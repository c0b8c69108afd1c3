"""Reusable tf_keras layers (serialisable under the `tfrec_zoo` package name)."""
from .attention import TargetAttention
from .autoencoder import (MixtureHeadsEncoder, PairwiseProducts, gaussian_kl, head_diversity_loss,
                          reconstruction_loss)
from .feature_layers import DenseTransform, FrozenTable, LengthMask, MaskedPooling, PoolSteps, ValidSteps
from .device_cloud import PriorLogit
from .divergence import DomainDivergence, js_penalty, mmd_penalty
from .domain_select import DomainSelect
from .interaction import FMInteraction, MixtureOfExperts
from .multi_interest import (AdaptiveInterestSelection, CapsuleInterests, SelfAttentiveInterests, collision_mask,
                             mask_collisions, multi_interest_scores, nearest_prototype, prototype_contrastive_loss)
from .multidomain import (PLE, AspectGatingFusion, DomainLinearMaps, DomainRowCounter, RandomTextVectors,
                          STARTopology)

__all__ = ["AdaptiveInterestSelection", "AspectGatingFusion", "CapsuleInterests", "collision_mask", "DenseTransform",
           "DomainDivergence", "DomainLinearMaps", "DomainRowCounter", "DomainSelect", "FMInteraction",
           "FrozenTable", "gaussian_kl", "head_diversity_loss", "js_penalty", "LengthMask", "mask_collisions",
           "MaskedPooling", "MixtureHeadsEncoder", "MixtureOfExperts", "mmd_penalty", "multi_interest_scores",
           "nearest_prototype", "PriorLogit", "PairwiseProducts", "PLE", "PoolSteps", "prototype_contrastive_loss",
           "RandomTextVectors", "reconstruction_loss", "SelfAttentiveInterests", "STARTopology", "TargetAttention",
           "ValidSteps"]
