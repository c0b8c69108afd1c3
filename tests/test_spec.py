"""Feature spec parsing and validation: every mistake names the file, the path inside it and a fix."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from tfrec_zoo.features import FeatureSpecError, VocabConfig, load_spec, parse_spec
from tfrec_zoo.features import safe_yaml
from tfrec_zoo.features import spec as spec_module
from tfrec_zoo.features.spec import MultiHotFeature, SequenceFeature, check_history_sources
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
    # unknown keys everywhere, with where they are and the valid keys
    (_with("colour", "red"), "colour", "valid keys: description, features, keys, name"),
    (_with("features.0.embeding_dim", 8), "features[0].embeding_dim", "did you mean 'embedding_dim'"),
    (_with("features.0.max_len", 3), "features[0].max_len", "applies to multi_hot or sequence features"),
    (_with("features.0.vocab.min_cnt", 2), "features[0].vocab.min_cnt", "valid keys: fit_on, max_size, min_count"),
    (_with("features.6.fields.0.colour", 1), "features[6].fields[0].colour", "unknown key 'colour' for an id field"),
    (_with("features.6.fields.0.normalization", "zscore"), "features[6].fields[0].normalization",
     "applies to dense fields"),
    (_with("features.6.fields.2.dim", 3), "features[6].fields[2].dim", "applies to vector fields"),
    # absurd sizes name the bound
    (_with("features.1.embedding_dim", 10 ** 12), "features[1].embedding_dim", "must be at most 4,096"),
    (_with("features.4.bucket_embedding_dim", 10 ** 6), "features[4].bucket_embedding_dim", "at most 4,096"),
    (_with("features.1.hash_buckets", 10 ** 10), "features[1].hash_buckets", "must be at most 100,000,000"),
    (_with("features.0.vocab.max_size", 10 ** 11), "features[0].vocab.max_size", "at most 100,000,000"),
    (_with("features.0.vocab.oov_buckets", 10 ** 7), "features[0].vocab.oov_buckets", "at most 1,000,000"),
    (_with("features.2.max_len", 10 ** 6), "features[2].max_len", "must be at most 10,000"),
    (_with("features.6.max_len", 10 ** 7), "features[6].max_len", "must be at most 100,000"),
    (_with("features.5.dim", 10 ** 6), "features[5].dim", "must be at most 65,536"),
    (_with("features.6.fields.1.dim", 10 ** 6), "features[6].fields[1].dim", "must be at most 65,536"),
    (_with("features.4.buckets", 10 ** 6), "features[4].buckets", "must be at most 10,000"),
    (_with("features.8.num_classes", -4), "features[8].num_classes", "must be >= 2"),
    # every value has its type (bools are not ints; padding is the field's own type)
    (_with("features.6.fields.0.padding", {"not": "an_int"}), "features[6].fields[0].padding",
     "expected an int64 id, got mapping"),
    (_with("features.6.fields.0.padding", True), "features[6].fields[0].padding", "got boolean"),
    (_with("features.6.fields.0.padding", 2 ** 64), "features[6].fields[0].padding", "expected an int64 id"),
    (_with("features.6.fields.2.padding", "zero"), "features[6].fields[2].padding", "expected a finite number"),
    (_with("features.1.fill", 2 ** 70), "features[1].fill", "expected `oov` or an int64 id, got 1180591620717411303424"),
    (_with("features.9.loss_weight", float("nan")), "features[9].loss_weight", "expected a finite number"),
    (_with("features.5.produced_by", 7), "features[5].produced_by", "expected string, got integer"),
    (_with("features.2.embedding_group", "my words"), "features[2].embedding_group", "not an identifier"),
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


# -- sequence field sources ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, source, words", [
    (0, "hist", "is a sequence feature, made when the dataset is written"),
    (0, "hist_len", "is the length column of 'hist'"),
    (0, "hist_query", "is a field of sequence 'hist'"),
    (0, "tag_w", "is the weights of multi_hot 'tags'"),
    (0, "tags", "is a string multi_hot feature, which an int64 id field cannot take its steps from"),
    (0, "user_id", "is a string id feature, which an int64 id field cannot take its steps from"),
    (1, "img", "is a vector feature (dim 3), which a vector (dim 2) field cannot take its steps from"),
    (2, "scene", "is a string domain feature, which a dense field cannot"),
    (0, "no such column", "is not a column name"),
])
def test_a_source_that_cannot_be_a_log_column_is_refused(field, source, words):
    with pytest.raises(FeatureSpecError) as e:
        parse_spec(_with(f"features.6.fields.{field}.source", source), "spec.yaml")
    msg = str(e.value)
    assert msg.startswith(f"spec.yaml: features[6].fields[{field}].source: {source!r} {words}"), msg
    assert "Fix: name the interaction-log column" in msg and "a raw column of the input data" in msg


def test_a_source_error_lists_the_columns_that_fit():
    with pytest.raises(FeatureSpecError) as e:
        parse_spec(_with("features.6.fields.0.source", "hist"), "spec.yaml")
    assert "one of the spec's item_id, price, click, buy, or a raw column" in str(e.value)


def test_sources_that_can_work_validate():
    spec = parse_spec(_with("features.6.fields.0.source", "item_id"), "spec.yaml")
    assert spec["hist"].fields[0].source == "item_id"
    # a column of the log that is not a feature (the taobao spec reads `behavior`): checked against the data
    assert parse_spec(_with("features.6.fields.2.source", "timestamp"), "spec.yaml")["hist"].fields[2].source == "timestamp"


def test_a_side_attribute_is_not_a_log_column():
    raw = {"name": "x", "features": [
        {"name": "movie_id", "kind": "id"},
        {"name": "poster", "kind": "vector", "dim": 2, "side_of": "movie_id"},
        {"name": "hist", "kind": "sequence", "max_len": 3, "fields": [{"name": "hist_poster", "kind": "vector",
                                                                       "dim": 2, "source": "poster"}]},
        {"name": "y", "kind": "label"}]}
    with pytest.raises(FeatureSpecError, match=r"x.yaml: features\[2\].fields\[0\].source: 'poster' is an attribute "
                                               r"of 'movie_id' \(side_of\), read from the catalogue"):
        parse_spec(raw, "x.yaml")


def test_check_history_sources_names_the_data_the_field_and_its_columns():
    spec = parse_spec(_with("features.6.fields.0.source", "no_such_column"), "spec.yaml")
    with pytest.raises(FeatureSpecError) as e:
        check_history_sources(spec, ["user_id", "item_id", "hist_query", "hist_ts", "__line__"], "log.csv")
    assert str(e.value) == (
        "log.csv: no column 'no_such_column', which the spec's field hist.hist_item reads (features[6].fields[0]"
        ".source in spec.yaml); the data has: user_id, item_id, hist_query, hist_ts. "
        "Fix: add the column to the data or fix `source:` in the spec")
    check_history_sources(spec, ["no_such_column", "hist_query", "hist_ts"], "log.csv")   # all there: no error


def test_data_write_names_the_missing_source_column(tmp_path: Path, capsys):
    from training.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent("""
        name: s
        keys: {user: user_id, item: item_id, time: ts}
        features:
          - {name: user_id, kind: id}
          - {name: item_id, kind: id}
          - {name: history, kind: sequence, max_len: 5, fields: [{name: hist_item_id, source: no_such_column}]}
          - {name: click, kind: label}
    """))
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,ts,click\n1,10,1,1\n1,11,2,0\n")
    assert main(["data", "write", "--spec", str(spec), "--input", str(log), "--out", str(tmp_path / "ds"),
                 "--split", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {log}: no column 'no_such_column', which the spec's field history.hist_item_id reads "
                   f"(features[2].fields[0].source in {spec}); the data has: user_id, item_id, ts, click. "
                   "Fix: add the column to the data or fix `source:` in the spec"]


# -- text encoders come from tfrec_zoo.text.ENCODERS -----------------------------------------------------------------
def _with_text(**settings) -> dict:
    raw = _with("features.5.dim", 3)
    raw["features"].insert(6, {"name": "title", "kind": "text", **settings})
    return raw


def test_text_encoder_must_be_a_known_one():
    from tfrec_zoo.text import ENCODERS

    with pytest.raises(FeatureSpecError) as e:
        parse_spec(_with_text(encoder="no-such-encoder"), "spec.yaml")
    assert str(e.value) == (f"spec.yaml: features[6].encoder: unknown text encoder 'no-such-encoder'. Fix: use one of "
                            f"{', '.join(sorted(ENCODERS))} (tfrec_zoo.text.ENCODERS)")
    with pytest.raises(FeatureSpecError, match=r"features\[6\].dim: encoder all-MiniLM-L6-v2 gives 384 floats, "
                                               r"`dim` says 512. Fix: set `dim: 384`"):
        parse_spec(_with_text(dim=512), "spec.yaml")
    assert parse_spec(_with_text(), "spec.yaml")["title"].dim == 384


def test_a_registered_encoder_is_accepted_with_its_own_dim(monkeypatch):
    import tfrec_zoo.features.text_encoders as known

    monkeypatch.setitem(known.ENCODER_DIMS, "tiny", 4)
    assert parse_spec(_with_text(encoder="tiny"), "spec.yaml")["title"].dim == 4


def test_the_spec_list_of_encoders_matches_their_factories():
    """Specs are validated against a TensorFlow-free list; it must name exactly the factories, with their dims."""
    from tfrec_zoo.text import ENCODERS
    from tfrec_zoo.features.text_encoders import ENCODER_DIMS

    assert {name: f.dim for name, f in ENCODERS.items()} == ENCODER_DIMS
    assert all(f.name == name for name, f in ENCODERS.items())


# -- load_spec: bounded input --------------------------------------------------------------------------------------
SMALL = textwrap.dedent("""\
    name: s
    features:
      - {name: item_id, kind: id}
      - {name: y, kind: label}
""")


def _load_error(tmp_path: Path, content: str | bytes, name: str = "s.yaml") -> str:
    p = tmp_path / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(FeatureSpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg and "Fix:" in msg, msg
    return msg[len(str(p)) + 2:]


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(spec_module, "MAX_SPEC_BYTES", 1000)
    msg = _load_error(tmp_path, SMALL + "#" * 1000 + "\n")
    assert msg.startswith("the file is larger than 1,000 bytes (0.000954 MiB), the most a spec may have")
    p = tmp_path / "ok.yaml"
    p.write_text(SMALL)
    assert load_spec(p).name == "s"


def test_the_default_size_limit_is_a_few_megabytes():
    assert spec_module.MAX_SPEC_BYTES == 8 * 2 ** 20


def test_non_utf8_bytes_name_the_line_and_byte_offset(tmp_path: Path):
    data = SMALL.replace("kind: label}", 'kind: label, doc: "caf\xe9"}').encode("latin-1")
    msg = _load_error(tmp_path, data)
    offset = data.index(b"\xe9")
    assert msg == f"line 4, byte offset {offset}: not UTF-8 (byte 0xe9). Fix: save the file as UTF-8"


def test_a_control_character_names_its_line_and_column(tmp_path: Path):
    msg = _load_error(tmp_path, SMALL.replace("kind: label}", 'kind: label, doc: "é\x01b"}'))
    assert msg.startswith("line 4, column 35: character #x0001 is not allowed in YAML (a control character)"), msg


def test_a_duplicate_key_names_both_places(tmp_path: Path):
    msg = _load_error(tmp_path, SMALL.replace("{name: item_id, kind: id}",
                                              "{name: item_id, kind: id, embedding_dim: 8, embedding_dim: 16}"))
    assert msg == ("line 3, column 49: duplicate key 'embedding_dim' (first at line 3 column 31, again at line 3 "
                   "column 49). Fix: keep one of them (YAML would silently keep the last)")
    msg = _load_error(tmp_path, SMALL + "name: again\n")
    assert msg.startswith("line 5, column 1: duplicate key 'name' (first at line 1 column 1, again at line 5 column 1)")


@pytest.mark.parametrize("name, text", [
    ("deep.yaml", "name: s\nfeatures: " + "[" * 20_000 + "]" * 20_000 + "\n"),
    ("deep.json", '{"name": "s", "features": ' + "[" * 20_000 + "]" * 20_000 + "}\n"),
    ("deep_block.yaml", "name: s\nfeatures:\n" + "".join("  " * i + f"- k{i}:\n" for i in range(1, 40))),
    ("deep_flow.yaml", "name: s\nfeatures: " + "[" * 30 + "]" * 30 + "\n"),
])
def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path: Path, name: str, text: str):
    msg = _load_error(tmp_path, text, name)
    assert "nested deeper than 20 levels" in msg or "exceeded maximum nesting depth" in msg, msg


def _alias_bomb() -> str:
    """Billion laughs under a sequence field's `padding` (once an unvalidated key): ~2 KB that expand to 9^9 values."""
    levels = ["&a [" + ", ".join([f'"{"lol" * 50}"'] * 9) + "]"]
    levels += [f"&{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, 10)]
    return SMALL.replace("- {name: y, kind: label}", "- {name: y, kind: label}\n  - name: h\n    kind: sequence\n"
                         "    max_len: 3\n    fields:\n      - name: h_item\n        padding: ["
                         + ",\n          ".join(levels) + "]")


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path):
    bomb = _alias_bomb()
    assert 2000 < len(bomb) < 2500
    msg = _load_error(tmp_path, bomb)
    assert re.match(r"line \d+, column \d+: aliases expand to more than 10000 values \(an alias bomb\?\)", msg), msg


def test_a_recursive_alias_is_refused(tmp_path: Path):
    msg = _load_error(tmp_path, SMALL.replace("{name: item_id, kind: id}", "{name: item_id, kind: id, doc: &d [*d]}"))
    assert "alias *d refers to its own anchor" in msg


def test_modest_aliases_and_merge_keys_still_load(tmp_path: Path):
    p = tmp_path / "a.yaml"
    p.write_text(textwrap.dedent("""\
        name: s
        features:
          - {name: user_id, kind: id, vocab: &v {min_count: 2, oov_buckets: 3}}
          - {name: item_id, kind: id, vocab: *v}
          - &base {name: price, kind: dense, normalization: log1p}
          - {<<: *base, name: cost}
          - {name: y, kind: label}
    """))
    spec = load_spec(p)
    assert spec["item_id"].vocab == spec["user_id"].vocab == VocabConfig(min_count=2, oov_buckets=3)
    assert spec["cost"].normalization == "log1p" and spec["cost"].name == "cost"


# -- validation is linear in the number of features ----------------------------------------------------------------
def _many_features(n: int) -> dict:
    """n input features of every table shape: vocabularies, groups, a long shares_embedding_with chain, histories."""
    features = []
    for i in range(n):
        r = i % 5
        if r == 0:
            features.append({"name": f"f{i}", "kind": "id", "vocab": {"min_count": 2}})
        elif r == 1:
            features.append({"name": f"f{i}", "kind": "multi_hot", "dtype": "string", "embedding_group": f"g{i % 50}"})
        elif r == 2:
            features.append({"name": f"f{i}", "kind": "dense"})
        elif r == 3:   # each shares with the previous sharer: one chain through n/5 columns
            features.append({"name": f"f{i}", "kind": "id", "shares_embedding_with": f"f{i - 5 if i > 3 else 0}"})
        else:
            features.append({"name": f"s{i}", "kind": "sequence", "max_len": 5, "fields": [
                {"name": f"h{i}", "source": f"f{i - 4}", "shares_embedding_with": f"f{i - 4}"},
                {"name": f"d{i}", "kind": "dense", "source": f"f{i - 2}"}]})
    return {"name": "many", "features": features + [{"name": "click", "kind": "label"}]}


def test_a_spec_with_20000_features_validates(tmp_path: Path):
    spec = parse_spec(_many_features(20_000), "many.yaml")
    assert len(spec.inputs) == 20_000
    tables = spec.tables()
    assert len(tables) == 4000 + 10     # one per vocabulary id (the chain shares f0's) and one per group
    assert tables["f0"][:4] == ["f0", "f3", "h4", "f8"] and len(tables["f0"]) == 1 + 4000 + 1  # f0, the chain, h4
    assert tables["f5"] == ["f5", "h9"]
    assert spec.table_of("f19998") == "f0" and spec.table_config("g1").name == "f1"
    # the same through a file (the loader and the cached lookups); JSON is YAML, and quick to write
    p = tmp_path / "many.json"
    p.write_text(json.dumps(spec.to_dict(), indent=1))
    assert load_spec(p).fingerprint == spec.fingerprint


# -- the safe loader itself, under both parsers (libyaml's and PyYAML's pure-Python one) -------------------------
@pytest.mark.parametrize("loader", safe_yaml.LOADERS, ids=lambda c: c.__name__)
def test_safe_yaml_loads_like_safe_load_and_refuses_the_same_things(loader):
    text = "a: [1, 2.5, {b: c}]\nd: &x {e: true}\nf: *x\ng: {<<: *x, e: false}\n"
    assert safe_yaml.load(text, loader) == yaml.safe_load(text)
    for bad, words in [("a: 1\nb: 2\na: 3\n", "duplicate key 'a' (first at line 1 column 1, again at line 3 column 1)"),
                       ("a: " + "[" * 25 + "]" * 25, "nested deeper than 20 levels"),
                       ("a: &r [*r]\n", "alias *r refers to its own anchor"),
                       (_alias_bomb(), "aliases expand to more than 10000 values")]:
        with pytest.raises(safe_yaml.LimitError, match=re.escape(words)):
            safe_yaml.load(bad, loader)
    with pytest.raises(yaml.YAMLError, match="undefined alias"):
        safe_yaml.load("a: *nope\n", loader)
