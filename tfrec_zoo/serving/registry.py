"""Which models and versions to serve: discovery (a base dir or a models.config), loading with warmup replay, and
the poll that follows the disk, with TF Serving's rules.

* A model is a directory of integer version sub-directories; a version counts once its saved_model.pb exists (an
  exporter that writes in place is not picked up half-written; ours renames a finished directory in).
* Version policy: `latest` (default, 1 version), `all` or `specific`, from models.config.
* Availability first, as TF Serving's default: a version that stops being wanted is unloaded only once a wanted one
  is serving, so a new version that fails to load (bad warmup included) leaves the previous one serving. A version
  whose directory is gone is unloaded regardless. A failed version is retried only when its files change.
"""
from __future__ import annotations

import logging
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from .._tf import tf
import tensorflow_text  # noqa: F401,E402  (registers its ops: stock TF Serving links them, so exports may use them)
from .signatures import ServingError, Signature, invalid, not_found, predict_protos

log = logging.getLogger(__name__)

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's own cap: warmup is for priming, not a second test set
_VERSION = re.compile(r"[0-9]+")


@dataclass
class ModelConfig:
    """One model_config_list entry (or a discovered directory: latest version, no labels)."""

    name: str
    base_path: Path
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)

    def wanted(self, on_disk: list[int]) -> set[int]:
        if self.policy == "all":
            return set(on_disk)
        if self.policy == "specific":
            return set(on_disk) & set(self.versions)
        return set(sorted(on_disk)[-self.num_versions:])


def parse_models_config(path: Path) -> list[ModelConfig]:
    """TF Serving's text-format ModelServerConfig; relative base paths are read from the working directory (as
    TF Serving does) or, failing that, from the config's own directory."""
    msg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(), msg)
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a text-format ModelServerConfig: {e}") from e
    if msg.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: only model_config_list is supported (no custom_model_config)")
    out = []
    for c in msg.model_config_list.config:
        if c.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {c.name!r}: model_platform {c.model_platform!r}, only 'tensorflow'")
        base = Path(c.base_path)
        if not base.is_absolute() and not base.exists() and (path.parent / base).exists():
            base = path.parent / base
        policy = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        out.append(ModelConfig(c.name, base, policy, max(1, c.model_version_policy.latest.num_versions),
                               tuple(c.model_version_policy.specific.versions), dict(c.version_labels)))
    return out


def version_dirs(base_path: Path) -> dict[int, Path]:
    if not base_path.is_dir():
        return {}
    return {int(p.name): p for p in base_path.iterdir()
            if _VERSION.fullmatch(p.name) and (p / "saved_model.pb").is_file()}


def discover_models(base_dir: Path) -> list[ModelConfig]:
    """Every non-hidden sub-directory with a version is a model; a base dir that is itself one model works too.
    Hidden and `*.tmp-*` directories (an exporter's or a build's work in progress, or left by a killed one) are not
    models."""
    if version_dirs(base_dir):
        return [ModelConfig(base_dir.name, base_dir)]
    return [ModelConfig(d.name, d) for d in sorted(base_dir.iterdir())
            if d.is_dir() and not d.name.startswith(".") and ".tmp-" not in d.name and version_dirs(d)]


def _fingerprint(path: Path) -> tuple:
    """Names, sizes and mtimes of a version's files: a failed version is retried only once these change."""
    out = []
    for p in path.rglob("*"):
        try:
            if p.is_file():
                s = p.stat()
                out.append((str(p.relative_to(path)), s.st_size, s.st_mtime_ns))
        except OSError:  # removed while we looked: the next poll sees the new state
            continue
    return tuple(sorted(out))


class WarmupError(ValueError):
    """The version's warmup file is unreadable or one of its requests fails: the version does not load."""


def _check_record_framing(path: Path) -> None:
    """TF's record readers take a file ending in a partial record (or a short junk file) as a clean EOF: walk the
    length fields so a truncated warmup file fails the load instead of quietly replaying less."""
    data, start, offset = path.read_bytes(), 0, 0
    while offset + 12 <= len(data):  # each record: length (8 bytes), its crc (4), data, data crc (4)
        start, offset = offset, offset + 12 + struct.unpack_from("<Q", data, offset)[0] + 4
    if offset != len(data):
        raise WarmupError(f"bad warmup file {path}: not a complete TFRecord file (the record at byte "
                          f"{start if offset > len(data) else offset} is cut short)")


class LoadedVersion:
    """One loaded SavedModel version: its signatures and the SignatureDefs GetModelMetadata returns."""

    def __init__(self, name: str, version: int, path: Path, max_batch_size: int | None, scheduler=None):
        self.name, self.version, self.path = name, version, path
        self._module = tf.saved_model.load(str(path))  # keeps the variables the signature functions capture alive
        self.signatures = {k: Signature(k, fn, max_batch_size, scheduler)
                           for k, fn in self._module.signatures.items()}
        meta = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes()).meta_graphs[0]
        # the proto's own map, as TF Serving returns it (names like "serving_default_examples:0" included)
        self.signature_def_map = get_model_metadata_pb2.SignatureDefMap(signature_def=meta.signature_def)
        self.warmup_replayed = 0

    def signature(self, name: str) -> Signature:
        sig = self.signatures.get(name or "serving_default")
        if sig is None:
            raise invalid(f"Serving signature key {name!r} not found in model {self.name!r} version {self.version} "
                          f"(signatures: {', '.join(sorted(self.signatures))})")
        return sig

    def replay_warmup(self) -> int:
        """Runs assets.extra/tf_serving_warmup_requests; any bad record fails the load (TF Serving's behaviour)."""
        path = self.path / WARMUP_FILE
        if not path.exists():
            return 0
        _check_record_framing(path)
        n = 0
        try:
            records = iter(tf.data.TFRecordDataset(str(path)))
            for n in range(1, MAX_WARMUP_RECORDS + 2):  # n: the record being read, for the message
                record = next(records, None)
                if record is None:
                    break
                record = record.numpy()
                if n > MAX_WARMUP_RECORDS:
                    raise ValueError(f"more than {MAX_WARMUP_RECORDS} records")
                entry = prediction_log_pb2.PredictionLog.FromString(record)
                if entry.WhichOneof("log_type") != "predict_log":
                    raise ValueError(f"{entry.WhichOneof('log_type')}: only predict_log is replayed")
                req = entry.predict_log.request
                predict_protos(self.signature(req.model_spec.signature_name), req.inputs, req.output_filter)
        except ServingError as e:
            raise WarmupError(f"bad warmup file {path}: record {n}: {e.message}") from e
        except Exception as e:  # a corrupt TFRecord (DataLossError), a record that is no PredictionLog, ...
            raise WarmupError(f"bad warmup file {path}: record {n}: {type(e).__name__}: {e}") from e
        n -= 1  # the loop ended reading past the last record
        self.warmup_replayed = n
        return n


@dataclass
class VersionState:
    state: str  # START, LOADING, AVAILABLE, END (TF Serving's ModelVersionStatus.State names)
    error: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK
    fingerprint: tuple = ()


@dataclass
class _Model:
    config: ModelConfig
    loaded: dict[int, LoadedVersion] = field(default_factory=dict)
    states: dict[int, VersionState] = field(default_factory=dict)


class ModelRegistry:
    """The served models. `poll()` brings them in line with the disk; lookups are safe from any thread."""

    def __init__(self, source: str | Path, max_batch_size: int | None = None, enable_warmup: bool = True,
                 scheduler=None):
        """`scheduler`: a batching.BatchScheduler the signatures share (None: every request runs on its own)."""
        self.source = Path(source)
        if not self.source.exists():
            raise FileNotFoundError(f"model source {self.source} does not exist (a base dir or a models.config)")
        self.max_batch_size, self.enable_warmup, self.scheduler = max_batch_size, enable_warmup, scheduler
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()  # guards _models; loading runs outside it so requests never wait on a load
        self._poll_lock = threading.Lock()  # one poll at a time (start()'s own and the poller thread's)
        self._configs: list[ModelConfig] = []

    def _read_configs(self) -> list[ModelConfig]:
        if self.source.is_dir():
            return discover_models(self.source)
        try:
            self._configs = parse_models_config(self.source)
        except (OSError, ValueError) as e:
            if not self._configs:
                raise
            log.error("%s; keeping the previous config", e)  # an editor's half-saved file must not unload models
        return self._configs

    def poll(self) -> None:
        with self._poll_lock:
            self._poll()

    def _poll(self) -> None:
        configs = {c.name: c for c in self._read_configs()}
        with self._lock:
            for gone in set(self._models) - set(configs):
                log.info("model %s: no longer configured or on disk, unloaded", gone)
                del self._models[gone]
            for cfg in configs.values():
                self._models.setdefault(cfg.name, _Model(cfg)).config = cfg
        for cfg in configs.values():
            self._sync(cfg)

    def _sync(self, cfg: ModelConfig) -> None:
        model = self._models[cfg.name]
        on_disk = version_dirs(cfg.base_path)
        wanted = cfg.wanted(list(on_disk))
        for v in sorted(wanted - set(model.loaded), reverse=True):  # newest first: it is what requests get
            fp = _fingerprint(on_disk[v])
            old = model.states.get(v)
            if old and old.error and old.fingerprint == fp:
                continue
            with self._lock:
                model.states[v] = VersionState("LOADING", fingerprint=fp)
            state = self._load(cfg.name, v, on_disk[v], fp, model)
            with self._lock:
                model.states[v] = state
        with self._lock:
            serving = any(v in model.loaded for v in wanted)
            for v in [v for v in model.loaded if v not in wanted and (serving or v not in on_disk)]:
                log.info("model %s: version %d unloaded", cfg.name, v)
                del model.loaded[v]
                model.states[v] = VersionState("END")

    def _load(self, name: str, version: int, path: Path, fp: tuple, model: _Model) -> VersionState:
        start = time.perf_counter()
        try:
            lv = LoadedVersion(name, version, path, self.max_batch_size, self.scheduler)
            replayed = lv.replay_warmup() if self.enable_warmup else 0
        except Exception as e:
            still = f"; still serving version {max(model.loaded)}" if model.loaded else ""
            log.error("model %s: version %d failed to load from %s: %s%s", name, version, path, e, still)
            msg = str(e) if isinstance(e, WarmupError) else f"{type(e).__name__}: {e}"
            return VersionState("END", msg, grpc.StatusCode.UNKNOWN, fp)
        with self._lock:
            model.loaded[version] = lv
        log.info("model %s: version %d available (%d warmup requests replayed, %.2fs)", name, version, replayed,
                 time.perf_counter() - start)
        return VersionState("AVAILABLE", fingerprint=fp)

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise not_found(f"Servable not found for request: Latest({name}): no model {name!r} is served "
                            f"(models: {', '.join(sorted(self._models)) or 'none'})")
        return model

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The loaded version a request names (latest when it names none)."""
        with self._lock:
            model = self._model(name)
            if label:
                if label not in model.config.labels:
                    raise invalid(f"Unrecognized servable version label: {label!r} for model {name!r}")
                version = model.config.labels[label]
            if version is None:
                if not model.loaded:
                    raise not_found(f"Servable not found for request: Latest({name}): no version is available")
                return model.loaded[max(model.loaded)]
            if version not in model.loaded:
                raise not_found(f"Servable not found for request: Specific({name}, {version}): serving versions "
                                f"{sorted(model.loaded) or 'none'}")
            return model.loaded[version]

    def status(self, name: str, version: int | None = None) -> dict[int, VersionState]:
        with self._lock:
            model = self._model(name)
            if version is None:
                if not model.states:
                    raise not_found(f"Could not find any versions of model {name}")
                return dict(sorted(model.states.items(), reverse=True))
            if version not in model.states:
                raise not_found(f"Could not find version {version} of model {name}")
            return {version: model.states[version]}

    def models(self) -> dict[str, list[int]]:
        """Model name -> the versions serving now."""
        with self._lock:
            return {k: sorted(m.loaded) for k, m in sorted(self._models.items())}
