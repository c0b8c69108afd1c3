"""Two-tower (DSSM-style) retrieval: a query tower and an item tower trained with in-batch sampled softmax, exported as
top-K retrieval models (brute force for stock TF Serving, ScaNN for speed) and evaluated over the full corpus.

    model = build_model("two_tower", spec, artifacts, {"temperature": 0.05})      # a TwoTowerModel
    model, history = train_two_tower(data, {"logq_correction": True}, early_stopping="recall@50")  # or fit
    ids, vectors = item_embeddings(model, data.artifacts)      # every item of the vocabulary -> its vector
    topk = scann_topk_model(model.query_model, ids, vectors, k=100)               # or brute_force_topk_model
    save_topk_model(topk, "saved_models/two_tower_topk")        # signature: query tower's raw inputs -> ids, scores
    report = evaluate_retrieval(model, data, split="test")     # Recall/HitRate/NDCG@K, +/- seen filter, popularity

Towers. The item tower reads the spec's `keys.item` id plus `item_features` (default: the id only); the query tower
reads every other input (default) or `query_features`: ids/multi-hot/dense/vector features as the ranking models do,
and every sequence's id fields mean-pooled over the valid steps (a history shares the item id's table, as the specs
declare). Each tower is concat -> MLP(units) -> Dense(output_dim) -> L2 normalisation (`normalize`, default on: the
score is a cosine; the exported vectors are unit-norm, so dot product == cosine at serving). CAUTION: the default
"everything else" puts features of the *target* item (e.g. ml-latest-small's `genres`, `year`, `title`, or the tags a
user gave the target, `query`) into the query tower, which is leakage for retrieval: list `query_features` (and
`item_features`) explicitly on such specs.

Training (`TwoTowerModel.train_step` / `compute_loss`): for a batch of B rows, logits = q_i . v_j / temperature over
all B rows' items, softmax cross-entropy of row i against its own item. One positive per row:
  * rows whose positive label (`label`, default the spec's first binary label) is <= 0, or whose sample weight is 0,
    are ignored as positives (weight 0: their items still serve as negatives for the other rows);
  * the loss is the weighted mean over positive rows;
  * `remove_accidental_hits` masks in-batch columns holding the row's own item (the same item in two rows);
  * `logq_correction` (Yi et al., RecSys 2019, "Sampling-bias-corrected neural modeling"): logits_ij -= log p_j,
    p_j = the probability that an in-batch candidate is item j, estimated from the running count of each item's
    occurrences in training batches so far / rows seen so far (exact frequencies once an epoch has passed; the
    paper's streaming estimator targets non-stationary streams). Serving scores are uncorrected.

Keras contract. `TwoTowerModel` is a functional model over the towers' inputs whose outputs follow the zoo's
`{task: prediction}` rule (binary: sigmoid(q.v / temperature), regression: q.v / temperature; an uncalibrated
relevance score, the model is never trained on those targets), so it compiles, fits, saves and serves like any zoo
model (`training/trainer.py` compiles it with the task losses, which `train_step` ignores). Its real products are
`.query_model` and `.item_model` (functional tf_keras models over raw inputs, [B, output_dim]).

Exports. `brute_force_topk_model` is TF ops only (matmul + tf.math.top_k) and runs on stock TF Serving.
`scann_topk_model` uses scann's TF ops (custom ops in namespace `Scann`): the SavedModel needs `import scann` (or
`tf.load_op_library` of scann's `_scann_ops.so`) before loading, and stock TF Serving does not link them (use a build
with ScaNN, e.g. google/tf-serving-scann). Both sign `serving_default(**query_inputs) -> {"ids": [B, K],
"scores": [B, K]}`; ids are the item vocabulary's raw ids, scores the dot products (cosines when normalised). The
ScaNN export rebuilds its searcher from the saved tensors on the first call after loading (~0.6 s for 1M x 64, then
~1 ms per single query here), so warm it up before taking traffic.

Measured on Amazon-Book (KGAT split, 70,591 test users, 24,909 items, 2 CPUs, batch 4096, Adam 2e-3, early stopping
on valid recall@50; test, seen items filtered): query tower = history only + logQ: Recall@50 0.206, NDCG@50 0.091;
default towers (user id + history), no logQ: 0.126 / 0.054; most popular: 0.058 / 0.020. The user id embedding
memorises the user's training items (valid recall falls after 2 epochs), and logQ is worth +50-60% here.

Evaluation (`evaluate_retrieval`): per user of the split, one query (the user's first row there; the earliest by
`keys.time` when the spec has one): relevant = the user's items in that split with a positive label; the corpus = the
item vocabulary (items outside it count in |relevant| but can never be retrieved); "filtered" removes the user's items
in the earlier splits (train, valid) from the list before cutting at K (over-fetch through the index, then filter);
popularity = items by their number of positive rows in those earlier splits, filtered the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._tf import keras, tf
from ..features.spec import FeatureSpec, SequenceFeature
from ..inputs import FeatureEmbeddings, build_inputs
from . import register_model
from .common import concat, functional_model, mlp, pooled_sequences

__all__ = ["TwoTowerConfig", "TwoTowerModel", "two_tower", "tower_features", "item_vocabulary", "item_embeddings"]


@dataclass(frozen=True)
class TwoTowerConfig:
    item_features: tuple = ()           # item-tower features besides keys.item (default: the item id only)
    query_features: tuple = ()          # default: every input not in the item tower (see the module doc's caution)
    query_units: tuple = (256,)         # hidden layers of the query tower, before the output projection
    item_units: tuple = ()              # hidden layers of the item tower (id only: a linear map of its embedding)
    output_dim: int = 64
    activation: str = "relu"
    dropout: float = 0.0
    embedding_l2: float = 0.0           # L2 penalty on every embedding table (0: none)
    normalize: bool = True              # L2-normalise both towers' outputs (score = cosine / temperature)
    temperature: float = 0.05
    logq_correction: bool = False       # Yi et al. 2019 sampling-bias correction of the in-batch softmax
    remove_accidental_hits: bool = True
    label: str = ""                     # the task whose positive rows are positives; default: the first binary label


# -- towers ------------------------------------------------------------------------------------------------------------
def tower_features(spec: FeatureSpec, cfg: TwoTowerConfig) -> tuple[list[str], list[str]]:
    """(query tower feature names, item tower feature names) in spec order."""
    item_key = spec.keys.get("item")
    if not item_key:
        raise ValueError(f"{spec.source}: two_tower needs `keys: {{item: ...}}` in the spec (the item tower's id)")
    names = [f.name for f in spec.inputs]
    for key, listed in (("item_features", cfg.item_features), ("query_features", cfg.query_features)):
        unknown = [n for n in listed if n not in names]
        if unknown:
            raise ValueError(f"two_tower.{key}: {unknown} are not input features of {spec.source} ({names})")
    item = [n for n in names if n == item_key or n in cfg.item_features]
    if any(isinstance(spec[n], SequenceFeature) for n in item):
        raise ValueError("two_tower.item_features: sequences belong to the query tower")
    query = [n for n in names if n not in item and (not cfg.query_features or n in cfg.query_features)]
    both = sorted(set(cfg.query_features) & set(item))
    if both:
        raise ValueError(f"two_tower: {both} listed in both towers")
    if not query:
        raise ValueError(f"{spec.source}: the query tower of two_tower has no features")
    return query, item


def _tower(spec: FeatureSpec, emb: FeatureEmbeddings, features: list[str], units, cfg: TwoTowerConfig, name: str):
    inputs = build_inputs(spec)
    parts = [emb.feature(n, inputs) for n in features if not isinstance(spec[n], SequenceFeature)]
    parts += pooled_sequences(spec, emb, inputs, exclude=[f.name for f in spec.of_kind("sequence")
                                                           if f.name not in features])
    if not parts:
        raise ValueError(f"two_tower: the {name} has no usable features among {features}")
    x = concat(parts, f"{name}_concat")
    x = mlp(x, units, dropout=cfg.dropout, activation=cfg.activation, name=name)
    x = keras.layers.Dense(cfg.output_dim, name=f"{name}_output")(x)
    if cfg.normalize:
        x = keras.layers.UnitNormalization(axis=-1, name=f"{name}_l2")(x)
    return functional_model(inputs, x, name)


class TwoTowerModel(keras.Model):
    """Query tower + item tower, trained with in-batch softmax (see the module docstring).

    Attributes: `query_model`, `item_model` (functional, raw inputs -> [B, output_dim]), `config`, `spec`,
    `item_key` (the item id column), `query_inputs` / `item_inputs` (their input names).
    """

    def __init__(self, spec: FeatureSpec, artifacts, cfg: TwoTowerConfig | None = None, **kwargs):
        cfg = cfg or TwoTowerConfig()
        if cfg.temperature <= 0:
            raise ValueError(f"two_tower.temperature must be > 0, got {cfg.temperature}")
        query_features, item_features = tower_features(spec, cfg)
        binary = [lab for lab in spec.labels if lab.type == "binary"]
        label = cfg.label or (binary[0].task if binary else "")
        if not label or label not in {lab.task for lab in spec.labels}:
            raise ValueError(f"{spec.source}: two_tower needs a positive label: set `label:` to one of "
                             f"{[lab.task for lab in spec.labels]} (default: the first binary label)")
        bad = [lab.task for lab in spec.labels if lab.type == "multiclass"]
        if bad:
            raise ValueError(f"{spec.source}: two_tower has no output for multiclass tasks {bad}")
        item_key = spec.keys["item"]
        emb = FeatureEmbeddings(spec, artifacts, embeddings_regularizer=keras.regularizers.l2(cfg.embedding_l2)
                                if cfg.embedding_l2 else None)
        query_model = _tower(spec, emb, query_features, cfg.query_units, cfg, "query_tower")
        item_model = _tower(spec, emb, item_features, cfg.item_units, cfg, "item_tower")
        item_lookup = emb.lookup(spec.table_of(item_key))

        inputs = build_inputs(spec)
        used = [k for k in inputs if k in set(query_model.input_names) | set(item_model.input_names)]
        inputs = {k: inputs[k] for k in used}
        q = query_model({k: inputs[k] for k in query_model.input_names})
        v = item_model({k: inputs[k] for k in item_model.input_names})
        score = keras.layers.Dot(axes=1, name="score_dot")([q, v])
        logit = keras.layers.Rescaling(1.0 / cfg.temperature, name="score")(score)
        outputs = {}
        for lab in spec.labels:
            out = keras.layers.Activation("sigmoid", name=f"{lab.task}_prob")(logit) if lab.type == "binary" \
                else logit
            outputs[lab.task] = keras.layers.Reshape((), name=lab.task)(out)
        super().__init__(inputs=inputs, outputs=outputs, name="two_tower", **kwargs)

        self.config = cfg
        self.spec = spec
        self.label_task = label
        self.item_key = item_key
        self.query_model = query_model
        self.item_model = item_model
        self.query_inputs = list(query_model.input_names)
        self.item_inputs = list(item_model.input_names)
        self._item_lookup = item_lookup
        self._n_item_rows = artifacts.vocab_size(spec, spec.table_of(item_key))
        self._loss_tracker = keras.metrics.Mean(name="loss")
        # logQ: running count of each item row's occurrences in training batches, and of rows seen
        self.item_counts = tf.Variable(tf.zeros([self._n_item_rows], tf.float32), trainable=False,
                                       name="logq_item_counts")
        self.rows_seen = tf.Variable(0.0, trainable=False, name="logq_rows_seen")

    # -- loss ----------------------------------------------------------------------------------------------------------
    @property
    def metrics(self):
        return [self._loss_tracker]

    def _positive_weights(self, labels, sample_weight):
        y = labels[self.label_task] if isinstance(labels, dict) else labels
        w = tf.cast(tf.reshape(y, [-1]) > 0, tf.float32)
        if sample_weight is not None:
            sw = sample_weight[self.label_task] if isinstance(sample_weight, dict) else sample_weight
            w = w * tf.cast(tf.reshape(sw, [-1]), tf.float32)
        return w

    def compute_loss(self, inputs, training: bool = False):
        """In-batch softmax loss of a `(features, labels[, sample_weights])` batch as `make_dataset` yields it."""
        x, y, sw = keras.utils.unpack_x_y_sample_weight(inputs)
        q = self.query_model({k: x[k] for k in self.query_inputs}, training=training)
        v = self.item_model({k: x[k] for k in self.item_inputs}, training=training)
        logits = tf.matmul(q, v, transpose_b=True) / self.config.temperature
        rows = self._item_lookup(x[self.item_key])
        n = tf.shape(logits)[0]
        if self.config.logq_correction:
            if training:
                self.item_counts.scatter_add(tf.IndexedSlices(tf.ones_like(rows, tf.float32), rows))
                self.rows_seen.assign_add(tf.cast(n, tf.float32))
            prob = tf.gather(self.item_counts, rows) / tf.maximum(self.rows_seen, 1.0)
            logits = logits - tf.math.log(tf.maximum(prob, 1e-9))[None, :]
        if self.config.remove_accidental_hits:
            same = tf.equal(rows[:, None], rows[None, :]) & ~tf.eye(n, dtype=tf.bool)
            logits = tf.where(same, tf.constant(-1e9, logits.dtype), logits)
        per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.range(n), logits=logits)
        w = self._positive_weights(y, sw)
        return tf.math.divide_no_nan(tf.reduce_sum(per_row * w), tf.reduce_sum(w))

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self.compute_loss(data, training=True)
            total = loss + (tf.add_n(self.losses) if self.losses else 0.0)
        grads = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self._loss_tracker.update_state(loss)
        return {"loss": self._loss_tracker.result()}

    def test_step(self, data):
        self._loss_tracker.update_state(self.compute_loss(data, training=False))
        return {"loss": self._loss_tracker.result()}


@register_model("two_tower", TwoTowerConfig)
def two_tower(spec, artifacts, cfg: TwoTowerConfig):
    """Two-tower (DSSM) retrieval: query and item towers, in-batch softmax (optional logQ correction)."""
    return TwoTowerModel(spec, artifacts, cfg)


# -- the item table ----------------------------------------------------------------------------------------------------
def item_vocabulary(model: TwoTowerModel, artifacts) -> np.ndarray:
    """The raw ids of every item of the item id's vocabulary (the retrieval corpus), in vocabulary order."""
    table = model.spec.table_of(model.item_key)
    if table not in artifacts.vocabs:
        raise ValueError(f"item table {table!r} is hashed: there is no vocabulary to enumerate the corpus from")
    return np.asarray(artifacts.vocabs[table])


def item_embeddings(model: TwoTowerModel, artifacts=None, *, item_ids=None, item_features: dict | None = None,
                    batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N], vectors [N, output_dim] float32): every item id through the item tower.

    `item_ids` defaults to the vocabulary (pass `artifacts`). An item tower with features besides the id needs
    `item_features` ({name: array aligned with item_ids}, e.g. from `collect_item_features`).
    """
    if item_ids is None:
        if artifacts is None:
            raise ValueError("item_embeddings: pass artifacts (for the vocabulary) or item_ids")
        item_ids = item_vocabulary(model, artifacts)
    item_ids = np.asarray(item_ids)
    feats = {model.item_key: item_ids}
    missing = [k for k in model.item_inputs if k not in feats and k not in (item_features or {})]
    if missing:
        raise ValueError(f"item_embeddings: the item tower also reads {missing}: pass item_features "
                         "(collect_item_features(data, model) gathers them from the data)")
    feats.update({k: np.asarray(v) for k, v in (item_features or {}).items() if k in model.item_inputs})
    vectors = model.item_model.predict(feats, batch_size=batch_size, verbose=0)
    return item_ids, np.asarray(vectors, np.float32)
