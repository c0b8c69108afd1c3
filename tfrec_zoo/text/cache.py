"""An on-disk cache in front of any TextEncoder, so each distinct text is run through the model once per machine.

Layout: one flat directory. A text's key is sha256(encoder name + "\\0" + text); the first byte of the key picks
one of 256 shard files `<encoder-name>-<xx>.npz`, each an uncompressed npz with
  keys      uint8 [m, 32]   the raw sha256 digests
  vectors   float32 [m, dim]
  checksum  uint8 [32]      sha256 of keys.tobytes() + vectors.tobytes()
Why this shape: ~100k texts make 256 files of ~400 rows (~600 KB) each, so a lookup reads only the shards its
keys fall in and a write rewrites one small file per touched shard instead of one ever-growing file. Writes go
to a temp file in the same directory and are moved in place with os.replace, so readers see the old shard or the
new one, never half of one. Two processes writing the same shard at once can drop each other's new rows (the
last replace wins); that only costs a recomputation later, never a wrong vector.

A shard that can't be read or fails its checksum / shape checks is reported with a `CacheCorruptionWarning`
naming the file, ignored, and rewritten with the recomputed vectors: a broken cache is slow, never wrong.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from tfrec_zoo.text.base import TextEncoder, check_texts

_KEY_BYTES = 32


class CacheCorruptionWarning(UserWarning):
    """A cache shard was unreadable or inconsistent; its entries are recomputed."""


def default_cache_dir() -> Path:
    """$TFREC_ZOO_CACHE if set (used as the text cache directory itself), else ~/.cache/tfrec_zoo/text."""
    env = os.environ.get("TFREC_ZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tfrec_zoo" / "text"


def _checksum(keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    digest = hashlib.sha256(keys.tobytes() + vectors.tobytes()).digest()
    return np.frombuffer(digest, dtype=np.uint8)


class CachedEncoder(TextEncoder):
    """Wraps `encoder`; `encode` returns cached vectors and runs `encoder` only on texts not seen before.

    "" is answered with zeros directly (the TextEncoder contract) and never stored.
    """

    def __init__(self, encoder: TextEncoder, cache_dir: str | os.PathLike | None = None):
        self.encoder = encoder
        self.name, self.dim = encoder.name, encoder.dim
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._prefix = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)
        # Parsed shards, reused while the file on disk is unchanged (os.replace gives each write a new inode).
        self._memo: dict[str, tuple[tuple[int, int, int], _Shard]] = {}

    def __repr__(self) -> str:
        return f"CachedEncoder({self.encoder!r}, cache_dir={str(self.cache_dir)!r})"

    def key(self, text: str) -> bytes:
        return hashlib.sha256(f"{self.name}\0{text}".encode("utf-8")).digest()

    def shard_path(self, key: bytes) -> Path:
        return self.cache_dir / f"{self._prefix}-{key[0]:02x}.npz"

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        texts = check_texts(texts, batch_size)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        wanted: dict[bytes, list[int]] = {}  # key -> rows of `texts` (duplicates share one key)
        for i, text in enumerate(texts):
            if text:
                wanted.setdefault(self.key(text), []).append(i)

        by_shard: dict[Path, list[bytes]] = {}
        for key in wanted:
            by_shard.setdefault(self.shard_path(key), []).append(key)
        missing: list[bytes] = []
        for path, keys in by_shard.items():
            shard = self._load(path)
            for key in keys:
                row = shard.index.get(key)
                if row is None:
                    missing.append(key)
                else:
                    out[wanted[key]] = shard.vectors[row]
        if not missing:
            return out

        fresh = self.encoder.encode([texts[wanted[k][0]] for k in missing], batch_size=batch_size)
        fresh = np.asarray(fresh, dtype=np.float32)
        if fresh.shape != (len(missing), self.dim):
            raise ValueError(f"{self.encoder!r}.encode returned shape {fresh.shape}, "
                             f"expected {(len(missing), self.dim)}")
        new_by_shard: dict[Path, list[int]] = {}
        for j, key in enumerate(missing):
            out[wanted[key]] = fresh[j]
            new_by_shard.setdefault(self.shard_path(key), []).append(j)
        for path, js in new_by_shard.items():
            self._append(path, [missing[j] for j in js], fresh[js])
        return out

    # -- shard files -------------------------------------------------------------------------------------------

    def _load(self, path: Path) -> _Shard:
        """A shard's contents; empty when the file is absent or corrupt (warned about, then recomputed)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return _Shard.empty(self.dim)
        memo = self._memo.get(path.name)
        if memo is not None and memo[0] == _stamp(st):
            return memo[1]
        try:
            shard = _Shard(*self._read(path))
        except Exception as exc:  # noqa: BLE001 - zip, npy and our own checks all mean "don't trust this file"
            warnings.warn(f"text cache shard {path} is corrupt ({type(exc).__name__}: {exc}); ignoring it, its "
                          f"vectors are recomputed and the file rewritten", CacheCorruptionWarning, stacklevel=3)
            return _Shard.empty(self.dim)
        self._memo[path.name] = (_stamp(st), shard)
        return shard

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        with np.load(path, allow_pickle=False) as data:  # reading each member checks the zip CRC too
            keys, vectors, checksum = data["keys"], data["vectors"], data["checksum"]
        if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != _KEY_BYTES:
            raise ValueError(f"keys have dtype {keys.dtype} shape {keys.shape}, expected uint8 [m, {_KEY_BYTES}]")
        if vectors.dtype != np.float32 or vectors.shape != (len(keys), self.dim):
            raise ValueError(f"vectors have dtype {vectors.dtype} shape {vectors.shape}, "
                             f"expected float32 {(len(keys), self.dim)}")
        if not np.array_equal(checksum, _checksum(keys, vectors)):
            raise ValueError("checksum mismatch")
        return keys, vectors

    def _append(self, path: Path, keys: list[bytes], vectors: np.ndarray) -> None:
        # Re-read right before writing so rows another process added since our lookup are kept.
        old = self._load(path)
        new = [j for j, k in enumerate(keys) if k not in old.index]
        new_keys = np.frombuffer(b"".join(keys[j] for j in new), np.uint8).reshape(-1, _KEY_BYTES)
        shard = _Shard(np.concatenate([old.keys, new_keys]),
                       np.ascontiguousarray(np.concatenate([old.vectors, vectors[new]]), dtype=np.float32))
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, keys=shard.keys, vectors=shard.vectors, checksum=_checksum(shard.keys, shard.vectors))
                f.flush()
                os.fsync(f.fileno())
                st = os.fstat(f.fileno())  # rename keeps inode, mtime and size: this is the stamp `path` will have
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._memo[path.name] = (_stamp(st), shard)


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_size


class _Shard:
    """One shard file's rows plus a key -> row index."""

    def __init__(self, keys: np.ndarray, vectors: np.ndarray):
        self.keys, self.vectors = keys, vectors
        raw = keys.tobytes()
        self.index = {raw[i * _KEY_BYTES:(i + 1) * _KEY_BYTES]: i for i in range(len(keys))}

    @classmethod
    def empty(cls, dim: int) -> "_Shard":
        return cls(np.zeros((0, _KEY_BYTES), np.uint8), np.zeros((0, dim), np.float32))
