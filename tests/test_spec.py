"""Feature spec parsing and validation: every mistake names the file, the path inside it and a fix."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from tfrec_zoo.features import FeatureSpecError, load_spec, parse_spec
from tfrec_zoo.features.spec import MultiHotFeature, SequenceFeature
from tfrec_zoo.paths import feature_specs_dir

GOOD = {
    "name": "toy",
    "keys": {"user": "user_id", "item": "item_id"},
    "features": [
        {"name": "user_id", "kind": "id", "dtype": "string", "vocab": {"min_count": 2, "oov_buckets": 3}},
        {"name": "item_id", "kind": "id", "embedding_dim": 8},
        {"name": "tags", "kind": "multi_hot", "dtype": "string", "max_len": 4, "combiner": "sqrtn",
         "weights": "tag_w", "embedding_group": "words"},
        {"name": "title_words", "kind": "multi_hot", "dtype": "string", "max_len": 6, "embedding_group": "words"},
        {"name": "price", "kind": "dense", "normalization": "log1p", "buckets": 4},
        {"name": "img", "kind": "vector", "dim": 3, "produced_by": "test"},
        {"name": "hist", "kind": "sequence", "max_len": 5, "fields": [
            {"name": "hist_item", "shares_embedding_with": "item_id"},
            {"name": "hist_query", "kind": "vector", "dim": 2},
            {"name": "hist_ts", "kind": "dense"}]},
        {"name": "scene", "kind": "domain", "dtype": "string"},
        {"name": "click", "kind": "label"},
        {"name": "buy", "kind": "label", "mask": "click", "loss_weight": 0.5},
    ],
}


def _with(path: str, value=None, delete: bool = False) -> dict:
    """A copy of GOOD with one key (dotted path, list indices as ints) replaced or deleted."""
    import copy

    raw = copy.deepcopy(GOOD)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    obj = raw
    for k in keys[:-1]:
        obj = obj[k]
    if delete:
        del obj[keys[-1]]
    else:
        obj[keys[-1]] = value
    return raw


def test_good_spec_parses_with_tables_and_defaults():
    spec = parse_spec(GOOD, "toy.yaml")
    assert [f.name for f in spec.inputs][:2] == ["user_id", "item_id"]
    assert spec.table_of("hist_item") == "item_id"
    assert spec.table_of("tags") == spec.table_of("title_words") == "words"
    assert spec.tables() == {"user_id": ["user_id"], "item_id": ["item_id", "hist_item"],
                             "words": ["tags", "title_words"], "scene": ["scene"]}
    assert spec["user_id"].vocab.oov_buckets == 3
    hist = spec["hist"]
    assert isinstance(hist, SequenceFeature) and hist.length_name == "hist_len"
    assert hist.fields[0].pad_value == 0 and hist.fields[1].dim == 2
    assert isinstance(spec["tags"], MultiHotFeature) and spec["tags"].combiner == "sqrtn"
    assert [lab.task for lab in spec.labels] == ["click", "buy"]


def test_fingerprint_ignores_layout_and_roundtrips_through_yaml():
    a = parse_spec(GOOD, "a.yaml")
    b = parse_spec(yaml.safe_load(yaml.safe_dump(a.to_dict())), "b.yaml")
    assert a.fingerprint == b.fingerprint
    c = parse_spec(_with("features.1.embedding_dim", 9), "c.yaml")
    assert c.fingerprint != a.fingerprint


@pytest.mark.parametrize("raw, path, words", [
    (_with("features.0.colour", 1), "features[0].colour", "unknown key"),
    (_with("features.1.kind", "idd"), "features[1].kind", "unknown kind"),
    (_with("features.1.embedding_dim", "big"), "features[1].embedding_dim", "expected integer"),
    (_with("features.1.embedding_dim", True), "features[1].embedding_dim", "boolean"),
    (_with("features.6.max_len", 0), "features[6].max_len", "must be > 0"),
    (_with("features.2.max_len", -1), "features[2].max_len", "must be > 0"),
    (_with("features.6.fields.0.shares_embedding_with", "nope"), "features[6].fields[0].shares_embedding_with",
     "not a categorical feature"),
    (_with("features.1.name", "user_id"), "features[1]", "duplicate name"),
    (_with("features.1.name", "dense"), "features[1]", "clashes with a name Keras"),
    (_with("features.5.dim", 0), "features[5].dim", "must be > 0"),
    (_with("features.5.dim", None), "features[5].dim", "is required"),
    (_with("features.2.combiner", "max"), "features[2].combiner", "not one of"),
    (_with("features.9.mask", "view"), "features[9].mask", "not a feature"),
    (_with("features.3.embedding_dim", 4), "features[3].embedding_dim", "disagree"),
    (_with("features.0.hash_buckets", 100), "features[0].vocab", "both `vocab` and `hash_buckets`"),
    (_with("keys.owner", "uid"), "keys.owner", "unknown role"),
    (_with("features.6.fields", []), "features[6].fields", "is empty"),
    (_with("features.6.fields.2.dtype", "string"), "features[6].fields[2].dtype", "applies to id fields"),
])
def test_each_mistake_names_the_path_and_a_fix(raw, path, words):
    with pytest.raises(FeatureSpecError) as e:
        parse_spec(raw, "spec.yaml")
    msg = str(e.value)
    assert msg.startswith(f"spec.yaml: {path}:"), msg
    assert words in msg and "Fix:" in msg


def test_no_label_is_an_error():
    raw = {"name": "x", "features": [{"name": "a", "kind": "id"}]}
    with pytest.raises(FeatureSpecError, match="no label.*Fix: add a feature with `kind: label`"):
        parse_spec(raw, "x.yaml")


def test_sharing_cycle_is_an_error():
    raw = {"name": "x", "features": [
        {"name": "a", "kind": "id", "shares_embedding_with": "b"},
        {"name": "b", "kind": "id", "shares_embedding_with": "a"},
        {"name": "y", "kind": "label"}]}
    with pytest.raises(FeatureSpecError, match="cycle"):
        parse_spec(raw, "x.yaml")


def test_load_spec_reports_yaml_syntax_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfeatures: [\n  {name: a, kind: id\n")
    with pytest.raises(FeatureSpecError, match=r"bad.yaml: line \d+, column \d+: not valid YAML"):
        load_spec(bad)
    with pytest.raises(FeatureSpecError, match="cannot read the spec"):
        load_spec(tmp_path / "missing.yaml")


def test_load_spec_from_file(tmp_path: Path):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent("""
        name: s
        features:
          - {name: item_id, kind: id}
          - {name: y, kind: label, type: multiclass}
    """))
    with pytest.raises(FeatureSpecError, match=r"s.yaml: features\[1\].num_classes: a multiclass label needs"):
        load_spec(p)


@pytest.mark.parametrize("path", sorted(feature_specs_dir().glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_validate(path: Path):
    spec = load_spec(path)
    assert spec.labels and spec.inputs
