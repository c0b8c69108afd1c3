"""A small BERT encoder written as tf_keras layers, plus the sentence-transformers pooling head.

The layers mirror the checkpoint layout of a Hugging Face `BertModel` so that `load_bert_weights` can copy a
safetensors state dict in by name, but the code is our own: one fused QKV projection per block (one matmul instead
of three, which is measurably faster on CPU), an additive attention mask, exact (erf) GELU and post-LayerNorm
residuals. Dropout is omitted on purpose: these layers are only ever used for inference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from tfrec_zoo._tf import keras, tf


@dataclass(frozen=True)
class BertConfig:
    """The few fields of a Hugging Face `config.json` the forward pass needs."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, cfg: Mapping) -> "BertConfig":
        if cfg.get("hidden_act", "gelu") != "gelu":  # "gelu" in HF BERT is the exact erf form; others we don't port
            raise ValueError(f"unsupported hidden_act {cfg.get('hidden_act')!r}; only exact 'gelu' is ported")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported position_embedding_type {cfg.get('position_embedding_type')!r}")
        return cls(**{f: cfg[f] for f in cls.__dataclass_fields__ if f in cfg})


def _layer_norm(cfg: BertConfig, name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=cfg.layer_norm_eps, name=name)


class BertEmbeddings(keras.layers.Layer):
    """word + absolute position + token type (always segment 0 for single sentences), then LayerNorm."""

    def __init__(self, cfg: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.layer_norm = _layer_norm(cfg, "LayerNorm")

    def build(self, input_shape: tf.TensorShape) -> None:
        c = self.cfg
        self.word = self.add_weight("word_embeddings", [c.vocab_size, c.hidden_size], trainable=False)
        self.position = self.add_weight("position_embeddings", [c.max_position_embeddings, c.hidden_size],
                                        trainable=False)
        self.token_type = self.add_weight("token_type_embeddings", [c.type_vocab_size, c.hidden_size],
                                          trainable=False)
        self.layer_norm.build(tf.TensorShape([None, None, c.hidden_size]))
        super().build(input_shape)

    def call(self, input_ids: tf.Tensor) -> tf.Tensor:
        seq_len = tf.shape(input_ids)[1]
        x = tf.gather(self.word, input_ids)
        # position and segment-0 rows broadcast over the batch instead of being gathered per example
        x = x + self.position[tf.newaxis, :seq_len] + self.token_type[0]
        return self.layer_norm(x)


class BertBlock(keras.layers.Layer):
    """One transformer block: self-attention + residual + LN, then GELU MLP + residual + LN (post-LN, as BERT)."""

    def __init__(self, cfg: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.qkv = keras.layers.Dense(3 * cfg.hidden_size, name="qkv")
        self.attn_out = keras.layers.Dense(cfg.hidden_size, name="attention_output")
        self.attn_norm = _layer_norm(cfg, "attention_LayerNorm")
        self.intermediate = keras.layers.Dense(cfg.intermediate_size, name="intermediate")
        self.output_dense = keras.layers.Dense(cfg.hidden_size, name="output")
        self.out_norm = _layer_norm(cfg, "output_LayerNorm")

    def build(self, input_shape: tf.TensorShape) -> None:
        h, shape = self.cfg.hidden_size, tf.TensorShape([None, None, self.cfg.hidden_size])
        self.qkv.build(shape)
        self.attn_out.build(shape)
        self.attn_norm.build(shape)
        self.intermediate.build(shape)
        self.output_dense.build(tf.TensorShape([None, None, self.cfg.intermediate_size]))
        self.out_norm.build(tf.TensorShape([None, None, h]))
        super().build(input_shape)

    def call(self, x: tf.Tensor, mask_bias: tf.Tensor) -> tf.Tensor:
        """x: [b, t, h]; mask_bias: [b, 1, 1, t], 0 for real tokens and a large negative number for padding."""
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        qkv = tf.reshape(self.qkv(x), [b, t, 3, self.heads, self.head_dim])
        q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))  # each [b, heads, t, head_dim]
        scores = tf.matmul(q, k, transpose_b=True) * (1.0 / float(np.sqrt(self.head_dim))) + mask_bias
        ctx = tf.matmul(tf.nn.softmax(scores, axis=-1), v)  # [b, heads, t, head_dim]
        ctx = tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [b, t, self.cfg.hidden_size])
        x = self.attn_norm(x + self.attn_out(ctx))
        mlp = self.output_dense(tf.nn.gelu(self.intermediate(x), approximate=False))
        return self.out_norm(x + mlp)


class BertEncoder(keras.layers.Layer):
    """Embeddings + N blocks: (input_ids [b, t] int32, attention_mask [b, t]) -> last hidden state [b, t, h]."""

    def __init__(self, cfg: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, name="embeddings")
        self.blocks = [BertBlock(cfg, name=f"layer_{i}") for i in range(cfg.num_hidden_layers)]

    def build(self, input_shape: tf.TensorShape) -> None:
        self.embeddings.build(tf.TensorShape([None, None]))
        for block in self.blocks:
            block.build(tf.TensorShape([None, None, self.cfg.hidden_size]))
        super().build(input_shape)

    def call(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(attention_mask, tf.float32)
        # -1e9 rather than -inf: exp underflows to exactly 0 all the same, and no NaN can come out of a padded row
        mask_bias = ((1.0 - mask) * -1e9)[:, tf.newaxis, tf.newaxis, :]
        x = self.embeddings(input_ids)
        for block in self.blocks:
            x = block(x, mask_bias)
        return x


def mean_pool_normalize(hidden: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
    """sentence-transformers' Pooling(mean over real tokens) + Normalize(L2), as all-MiniLM-L6-v2 configures them."""
    mask = tf.cast(attention_mask, hidden.dtype)[:, :, tf.newaxis]
    summed = tf.reduce_sum(hidden * mask, axis=1)
    mean = summed / tf.maximum(tf.reduce_sum(mask, axis=1), 1e-9)  # same clamp as sentence-transformers
    return mean / tf.maximum(tf.norm(mean, axis=-1, keepdims=True), 1e-12)  # same eps as torch F.normalize


def load_bert_weights(encoder: BertEncoder, state: Mapping[str, np.ndarray], prefix: str = "") -> None:
    """Copy a Hugging Face BertModel state dict into `encoder`; every tensor the forward pass needs must be there.

    Torch Linear stores [out, in]; Keras Dense kernels are [in, out], hence the transposes. Q, K and V are stacked
    along the output axis in the order the fused projection splits them (see BertBlock.call).
    """
    used: set[str] = set()

    def get(key: str) -> np.ndarray:
        full = prefix + key
        if full not in state:
            raise KeyError(f"weight {full!r} missing from the checkpoint")
        used.add(full)
        return np.asarray(state[full], dtype=np.float32)

    def assign(var: tf.Variable, value: np.ndarray, key: str) -> None:
        if tuple(var.shape) != value.shape:
            raise ValueError(f"weight {key!r}: checkpoint shape {value.shape} != model shape {tuple(var.shape)}")
        var.assign(value)

    def dense(layer: keras.layers.Dense, keys: list[str]) -> None:
        kernel = np.concatenate([get(f"{k}.weight").T for k in keys], axis=1)
        bias = np.concatenate([get(f"{k}.bias") for k in keys])
        assign(layer.kernel, kernel, keys[0])
        assign(layer.bias, bias, keys[0])

    def norm(layer: keras.layers.LayerNormalization, key: str) -> None:
        assign(layer.gamma, get(f"{key}.weight"), key)
        assign(layer.beta, get(f"{key}.bias"), key)

    emb = encoder.embeddings
    for var, key in ((emb.word, "word_embeddings"), (emb.position, "position_embeddings"),
                     (emb.token_type, "token_type_embeddings")):
        assign(var, get(f"embeddings.{key}.weight"), key)
    norm(emb.layer_norm, "embeddings.LayerNorm")
    for i, block in enumerate(encoder.blocks):
        p = f"encoder.layer.{i}."
        dense(block.qkv, [p + "attention.self.query", p + "attention.self.key", p + "attention.self.value"])
        dense(block.attn_out, [p + "attention.output.dense"])
        norm(block.attn_norm, p + "attention.output.LayerNorm")
        dense(block.intermediate, [p + "intermediate.dense"])
        dense(block.output_dense, [p + "output.dense"])
        norm(block.out_norm, p + "output.LayerNorm")
