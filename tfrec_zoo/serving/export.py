"""TF Serving exports: a trained model + its feature spec -> `BASE/NAME/<version>/`, exactly what TF Serving loads.

Signatures (inputs -> one output per task, named by the task; binary/regression [B], multiclass [B, classes]):

* `serving_default`  `examples`: DT_STRING [-1], serialized tf.Example parsed in-graph with the training spec.
* `rank`             `context`: DT_STRING [] (one tf.Example with the request-level features: user, history, ...)
                     + `candidates`: DT_STRING [-1] (one tf.Example per candidate with the item-side features):
                     one request scores N candidates for one user. Each candidate scores as the merged example
                     its serialized bytes appended to the context's would be (a key the candidate has values
                     for replaces the context's), but the context is parsed once, not N times; models that
                     `broadcasts_context` (e.g. seminar, twin) get its features at [1, ...].
* `predict_raw`      the model's raw tensors (ids, floats, padded sequences + `<name>_len` lengths).
* `serving_text`, `rank_text` (exported with `text_encoders`, `tfrec-zoo export --raw-text`): as serving_default
                     and rank, but each text feature the model reads is the raw string (a bytes_list of one
                     value; "" = no text), encoded in the graph by the spec's encoder (MiniLM: tensorflow_text
                     ops, which stock TF Serving links) instead of a vector the client computes.

A version is staged in a hidden directory (`NAME/.tmp-<version>-<pid>/`) that no version scan picks up, checked
there (the exporter's fresh-process parity), and only then renamed to `NAME/<version>`: a server polling the
directory never sees an unchecked or half-written version, and a staging directory left by a killed export is
removed by the next export. Only the newest `keep` versions are kept. `assets.extra/
tf_serving_warmup_requests` holds PredictionLog records built from real examples, replayed by TF Serving at load.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .._tf import tf
from ..data.reader import parse_features, parse_ranking_request
from ..data.staging import pid_alive
from ..features.spec import FeatureSpec

WARMUP_FILE = "tf_serving_warmup_requests"


class ServingModule(tf.Module):
    """The model wrapped with the three signatures above (the keras model is tracked, so its variables and lookup
    tables are saved; nothing of tfrec_zoo is needed to load it)."""

    def __init__(self, model, spec: FeatureSpec, *, call=None, input_model=None, rank: bool = True,
                 text_encoders: dict | None = None):
        """`model` is tracked (saved); `call(features) -> dict or tensor` defaults to the keras model itself and
        `input_model` (whose inputs the request carries) to `model`: a top-K module passes its query tower.
        `text_encoders` ({text feature: keras model, strings [B] -> [B, dim]}) add the raw-text signatures."""
        super().__init__()
        self.model = model
        self._spec = spec
        self.text_encoders = dict(text_encoders or {})
        self._call = call or (lambda features: model(features, training=False))
        inputs_of = input_model or model
        self._features = list(inputs_of.input_names)
        self._with_rank = rank
        # `<feature>_len` inputs of padded lists -> their padded width, checked on predict_raw requests
        self._length_inputs = {f.length_name: f.max_len for f in spec.inputs
                               if hasattr(f, "length_name") and f.length_name in self._features}
        raw_specs = [tf.TensorSpec(t.shape, t.dtype, name=name)
                     for name, t in zip(inputs_of.input_names, inputs_of.inputs)]
        self.serve_examples = tf.function(self._serve_examples,
                                          input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        self.rank = tf.function(self._rank, input_signature=[tf.TensorSpec([], tf.string, name="context"),
                                                             tf.TensorSpec([None], tf.string, name="candidates")])
        # a signature takes flat, named tensors: one positional argument per model input, named by the TensorSpec
        self.predict_raw = tf.function(self._predict_raw, input_signature=raw_specs)
        if self.text_encoders:
            unknown = sorted(set(self.text_encoders) - set(self._features))
            if unknown:
                raise ValueError(f"text encoders for {unknown}: not inputs of the model ({self._features})")
            self.serve_text = tf.function(self._serve_text,
                                          input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
            self.rank_text = tf.function(self._rank_text, input_signature=[
                tf.TensorSpec([], tf.string, name="context"), tf.TensorSpec([None], tf.string, name="candidates")])

    def _outputs(self, features: dict) -> dict:
        out = self._call({k: features[k] for k in self._features})
        if not isinstance(out, dict):  # a tower: one vector per row
            out = {"embedding": out}
        return {k: tf.identity(v, name=k) for k, v in out.items()}

    def _serve_examples(self, examples):
        return self._outputs(parse_features(self._spec, examples, self._features))

    def _encoded(self, features: dict) -> dict:
        """Raw text strings -> the vectors the model was trained on (the same encoder as `data write`)."""
        out = dict(features)
        for name, encoder in self.text_encoders.items():
            texts = features[name]
            flat = tf.reshape(texts, [-1])
            vectors = encoder(flat)
            out[name] = tf.reshape(vectors, tf.concat([tf.shape(texts), tf.shape(vectors)[-1:]], 0))
        return out

    def _serve_text(self, examples):
        feats = parse_features(self._spec, examples, self._features, raw_text=list(self.text_encoders))
        return self._outputs(self._encoded(feats))

    def _rank_text(self, context, candidates):
        return self._rank(context, candidates, raw_text=list(self.text_encoders))

    def _rank(self, context, candidates, raw_text=()):
        # a model that `broadcasts_context` gets the request-level features once ([1, ...]): a lifelong model then
        # builds the history's steps once instead of once per candidate
        shared = bool(getattr(self.model, "broadcasts_context", False))
        feats = parse_ranking_request(self._spec, context, candidates, self._features, broadcast=not shared,
                                      raw_text=raw_text)
        out = self._outputs(self._encoded(feats) if raw_text else feats)
        if not shared:
            return out
        n = tf.shape(candidates)[:1]       # every output one row per candidate, even when no candidate feature varies
        return {k: tf.broadcast_to(v, tf.concat([n, tf.shape(v)[1:]], 0)) for k, v in out.items()}

    def _predict_raw(self, *tensors):
        features = dict(zip(self._features, tensors))
        # the parsed paths (serving_default, rank) cannot produce these; a raw request can, and the model would
        # answer them with a number: a length outside [0, padded width] reads padding or nothing, NaN spreads
        checks = []
        for name, width in self._length_inputs.items():
            n = features[name]
            checks.append(tf.debugging.assert_non_negative(n, message=f"predict_raw: {name} has a negative length"))
            checks.append(tf.debugging.assert_less_equal(
                n, tf.cast(width, n.dtype), message=f"predict_raw: {name} is longer than the padded width {width}"))
        for name, t in features.items():
            if t.dtype.is_floating:
                checks.append(tf.debugging.assert_all_finite(t, f"predict_raw: {name} has NaN or inf values"))
        with tf.control_dependencies(checks):
            features = {k: tf.identity(v) for k, v in features.items()}
        return self._outputs(features)

    def signatures(self) -> dict:
        sigs = {"serving_default": self.serve_examples, "predict_raw": self.predict_raw}
        if self._with_rank:
            sigs["rank"] = self.rank
        if self.text_encoders:
            sigs["serving_text"] = self.serve_text
            if self._with_rank:
                sigs["rank_text"] = self.rank_text
        return sigs


def versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit())


def warmup_records(name: str, examples: Sequence[bytes], batch: int = 8) -> list[bytes]:
    """PredictionLog records (serving_default, `batch` examples each) for assets.extra/tf_serving_warmup_requests."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    records = []
    for start in range(0, len(examples), batch):
        chunk = list(examples[start:start + batch])
        req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name="serving_default"))
        req.inputs["examples"].CopyFrom(tf.make_tensor_proto(chunk, dtype=tf.string, shape=[len(chunk)]))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
        records.append(log.SerializeToString())
    return records


def text_encoders_for(model, spec: FeatureSpec) -> dict:
    """{text feature the model reads: the spec encoder's keras model (strings -> vectors)}."""
    from ..features.spec import TextFeature
    from ..text import get_encoder

    out = {}
    for f in spec.row_features:
        if isinstance(f, TextFeature) and f.name in model.input_names:
            encoder = get_encoder(f.encoder)
            base = getattr(encoder, "encoder", encoder)          # the model behind the on-disk cache
            if not hasattr(base, "keras_model"):
                raise ValueError(f"text feature {f.name!r}: encoder {f.encoder} has no in-graph model to serve")
            out[f.name] = base.keras_model
    return out


Check = Callable[[Path], None]  # raises if the SavedModel at that path must not be served


@dataclass
class StagedVersion:
    """A version written but not yet visible: the SavedModel at `path`, inside a hidden staging directory that no
    version scan (ours or TF Serving's, which take integer names only) can pick up."""

    model_dir: Path
    version: int
    root: Path

    @property
    def path(self) -> Path:
        return self.root / "model"

    @property
    def final(self) -> Path:
        return self.model_dir / str(self.version)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def remove_stale_staging(model_dir: Path) -> list[Path]:
    """Staging directories (`.tmp-<version>-<pid>`) whose exporter is gone: killed mid-export, never published."""
    removed = []
    for p in model_dir.glob(".tmp-*"):
        m = re.fullmatch(r"\.tmp-[0-9]+-([0-9]+)", p.name)
        if m and p.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def stage_model(model, spec: FeatureSpec, base_dir: str | Path, name: str, *,
                warmup_examples: Sequence[bytes] = (), version: int | None = None,
                module: ServingModule | None = None, options=None) -> StagedVersion:
    """Writes `model` (or a prepared `module`) as version `version` (default: latest + 1) of `base_dir/name`,
    staged: nothing is visible until `publish`."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".tmp-" in name:
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '.', '-' (it becomes a directory and a URL)")
    model_dir = Path(base_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(model_dir)
    existing = versions(model_dir)
    version = version if version is not None else (existing[-1] + 1 if existing else 1)
    if version in existing:
        raise FileExistsError(f"{model_dir / str(version)} exists; versions are immutable, export a new one")
    staged = StagedVersion(model_dir, version, model_dir / f".tmp-{version}-{os.getpid()}")
    staged.discard()
    try:
        staged.root.mkdir()
        module = module or ServingModule(model, spec)
        tf.saved_model.save(module, str(staged.path), signatures=module.signatures(), options=options)
        if warmup_examples:
            (staged.path / "assets.extra").mkdir()
            with tf.io.TFRecordWriter(str(staged.path / "assets.extra" / WARMUP_FILE)) as w:
                for rec in warmup_records(name, warmup_examples):
                    w.write(rec)
    except BaseException:
        staged.discard()
        raise
    return staged


def publish(staged: Sequence[StagedVersion], *, keep: int = 5) -> list[Path]:
    """Renames staged versions into place (a server polling the model dirs sees each version whole, and only
    now), keeps the newest `keep` of each model and rewrites models.config."""
    out = []
    try:
        for st in staged:
            os.replace(st.path, st.final)
            out.append(st.final)
    finally:
        for st in staged:
            st.discard()
    for st in staged:
        for old in versions(st.model_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(st.model_dir / str(old), ignore_errors=True)
    if staged:
        write_models_config(staged[0].model_dir.parent)
    return out


def export_model(model, spec: FeatureSpec, base_dir: str | Path, name: str, *, warmup_examples: Sequence[bytes] = (),
                 version: int | None = None, keep: int = 5, module: ServingModule | None = None,
                 options=None, check: Check | None = None) -> Path:
    """Export `model` (or a prepared `module`) as version `version` (default: latest + 1) of `base_dir/name`;
    returns the version dir. `check(path)` runs on the staged SavedModel first: if it raises, nothing is
    published (a failed or killed export never shows a version to a server)."""
    staged = stage_model(model, spec, base_dir, name, warmup_examples=warmup_examples, version=version,
                         module=module, options=options)
    try:
        if check is not None:
            check(staged.path)
    except BaseException:
        staged.discard()
        raise
    return publish([staged], keep=keep)[0]


def write_models_config(base_dir: str | Path) -> Path:
    """`base_dir/models.config`: TF Serving's model_config_list for every model directory (absolute paths)."""
    base = Path(base_dir).resolve()
    entries = []
    for d in sorted(p for p in base.iterdir() if p.is_dir() and versions(p)):
        entries.append(f'  config {{\n    name: "{d.name}"\n    base_path: "{d}"\n    model_platform: "tensorflow"\n  }}')
    text = "model_config_list {\n" + "\n".join(entries) + "\n}\n"
    path = base / "models.config"
    tmp = path.with_name(f".models.config.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def export_retrieval(model, spec: FeatureSpec, artifacts, base_dir: str | Path, name: str, *, k: int = 100,
                     warmup_examples: Sequence[bytes] = (), keep: int = 5, scann: bool = True,
                     checks: Mapping[str, Check] | None = None) -> dict[str, Path]:
    """A retrieval model (query_model / item_model towers) as four TF Serving models: NAME_query and NAME_item (the towers: `embedding`),
    NAME_topk (query tower + exact top-K over every item: `ids`, `scores`; stock TF ops) and NAME_topk_scann
    (the same through ScaNN: needs scann's ops, i.e. the ScaNN build of TF Serving). Each takes serialized
    tf.Example (`serving_default`) or raw tensors (`predict_raw`). `checks` ({suffix: check(path)}) run on the
    staged SavedModels; the four are published together only when every check passes."""
    from ..retrieval import brute_force_topk_model, item_embeddings, scann_topk_model

    ids, vectors = item_embeddings(model, artifacts)
    staged: dict[str, StagedVersion] = {}
    try:
        for suffix, tower in (("query", model.query_model), ("item", model.item_model)):
            staged[suffix] = stage_model(tower, spec, base_dir, f"{name}_{suffix}", warmup_examples=warmup_examples,
                                         module=ServingModule(tower, spec, rank=False))
        topks = [("topk", brute_force_topk_model(model.query_model, ids, vectors, k), None)]
        if scann:
            topks.append(("topk_scann", scann_topk_model(model.query_model, ids, vectors, k),
                          tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])))
        for suffix, topk, options in topks:
            module = ServingModule(topk, spec, call=topk._serve, input_model=model.query_model, rank=False)
            staged[suffix] = stage_model(topk, spec, base_dir, f"{name}_{suffix}", warmup_examples=warmup_examples,
                                         module=module, options=options)
        for suffix, check in (checks or {}).items():
            check(staged[suffix].path)
    except BaseException:
        for st in staged.values():                # all four or none: a half-exported model is not servable
            st.discard()
        raise
    return dict(zip(staged, publish(list(staged.values()), keep=keep)))
