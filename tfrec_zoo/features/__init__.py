"""Declarative feature specs (YAML) and the artifacts fitted from training data."""
from .artifacts import Artifacts, fit_artifacts
from .spec import (
    DenseFeature, DomainFeature, Feature, FeatureSpec, FeatureSpecError, IdFeature, LabelFeature, MultiHotFeature,
    SequenceFeature, SequenceField, TextFeature, VectorFeature, VocabConfig, load_spec, parse_spec,
)

__all__ = [
    "Artifacts", "fit_artifacts", "DenseFeature", "DomainFeature", "Feature", "FeatureSpec", "FeatureSpecError",
    "IdFeature", "LabelFeature", "MultiHotFeature", "SequenceFeature", "SequenceField", "TextFeature",
    "VectorFeature", "VocabConfig", "load_spec", "parse_spec",
]
