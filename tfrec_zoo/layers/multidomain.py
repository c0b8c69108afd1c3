"""Multi-domain layers: S&R's Aspect Gating Fusion and domain linear maps, PLE and STAR for the baselines.

The S&R foundation model's equations were not readable (docs/papers.md section 2); the formulas below follow the
digest's reconstruction and are marked [inferred] where the paper does not say (seeds/papers/sr_foundation.md,
"Formulas chosen").
Domain indices are int [B] (or [B, 1]) in [0, num_domains); out-of-range ids fail with one clear message.
"""
from __future__ import annotations

from typing import Sequence

from .._tf import keras, tf
from .divergence import domain_index

GATINGS = ("mean", "cls", "domain")


def _select_domain(per_domain, domain):
    """[B, D, u] outputs of every domain's map -> row b's own domain's [B, u]. Computing all D maps and selecting
    keeps memory at B*D*u, where gathering a [d, u] kernel per row would hold B*d*u (D is a handful of domains)."""
    return tf.gather(per_domain, domain, batch_dims=1)


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class AspectGatingFusion(keras.layers.Layer):
    """Fuses K aspect vectors of one entity (id embedding, LLM text vector, sparse-feature vector) with a softmax gate.

        a'_k = a_k                     if width(a_k) == units   ([inferred]: aspects already in the common space)
             = P_k a_k + p_k           otherwise (a per-aspect linear projection to `units`)
        u    = (1/K) sum_k a'_k        gating="mean"   (inputs: [a_1 .. a_K])
             = h_cls                   gating="cls"    (inputs: [a_1 .. a_K, h_cls [B, d_text]], the text encoder's
                                                        [CLS]-position token vector)
             = e_dom                   gating="domain" (inputs: [a_1 .. a_K, e_dom [B, d_dom]], a domain embedding)
        g    = softmax(W_g u + b_g)    in R^K, softmax over the aspects
        out  = sum_k g_k a'_k          [B, units]

    The three gate inputs are the paper's Mean-, [CLS]- and Domain-Gating [3rd]; that the gate is one dense layer with
    a softmax over aspects, and what "mean" averages, are [inferred]. units=None: the width of the first aspect.
    return_gates=True returns (out, g) so a model can log which aspect dominates.
    """

    def __init__(self, gating: str = "domain", units: int | None = None, return_gates: bool = False, **kwargs):
        super().__init__(**kwargs)
        if gating not in GATINGS:
            raise ValueError(f"AspectGatingFusion: gating must be one of {list(GATINGS)}, got {gating!r}")
        self.gating, self.units, self.return_gates = gating, None if units is None else int(units), bool(return_gates)

    def _aspect_shapes(self, input_shape):
        shapes = list(input_shape) if self.gating == "mean" else list(input_shape)[:-1]
        if len(shapes) < 1:
            extra = "" if self.gating == "mean" else f" followed by the {self.gating} gate input"
            raise ValueError(f"AspectGatingFusion(gating={self.gating!r}): pass a list of aspect vectors{extra}; "
                             f"got {len(list(input_shape))} input(s)")
        return shapes

    def build(self, input_shape):
        shapes = self._aspect_shapes(input_shape)
        width = self.units or int(shapes[0][-1])
        self.projections = [None if int(s[-1]) == width else keras.layers.Dense(width, name=f"aspect{k}_proj")
                            for k, s in enumerate(shapes)]
        self.gate = keras.layers.Dense(len(shapes), name="gate")
        super().build(input_shape)

    def call(self, inputs):
        inputs = list(inputs)
        raw = inputs if self.gating == "mean" else inputs[:-1]
        aspects = tf.stack([a if p is None else p(a) for a, p in zip(raw, self.projections)], axis=1)  # [B, K, u]
        u = tf.reduce_mean(aspects, axis=1) if self.gating == "mean" else inputs[-1]
        gates = tf.nn.softmax(self.gate(u), axis=-1)                                                   # [B, K]
        out = tf.einsum("bk,bku->bu", gates, aspects)
        return (out, gates) if self.return_gates else out

    def get_config(self):
        return {**super().get_config(), "gating": self.gating, "units": self.units, "return_gates": self.return_gates}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class DomainLinearMaps(keras.layers.Layer):
    """One linear map per domain into a shared space: out_b = W_{dom_b} x_b + c_{dom_b}  ([inferred] form of S&R's
    "domain-specific linear transformations"). Inputs: (x [B, d], domain [B] int); kernel [D, d, units],
    bias [D, units].

    kernel_initializer="identity" starts every domain at the (rectangular) identity, i.e. all domains begin in the
    same space; any Keras initializer name is accepted otherwise. A new domain (cold start) needs a slot: build with
    num_domains counting it, train on the others (an unused slot gets zero gradient), restore, then call
    `init_domain_from_mean` (its map = the mean of the trained domains' maps) or `init_domain_identity`.
    """

    def __init__(self, num_domains: int, units: int | None = None, use_bias: bool = True,
                 kernel_initializer: str = "identity", **kwargs):
        super().__init__(**kwargs)
        if int(num_domains) < 1:
            raise ValueError(f"DomainLinearMaps: num_domains must be >= 1, got {num_domains}")
        self.num_domains, self.units = int(num_domains), None if units is None else int(units)
        self.use_bias, self.kernel_initializer = bool(use_bias), kernel_initializer

    def _identity(self, shape, dtype=None):
        return tf.broadcast_to(tf.eye(shape[1], shape[2], dtype=dtype), shape)

    def build(self, input_shape):
        d = int(input_shape[0][-1])
        self.units = self.units or d
        init = self._identity if self.kernel_initializer == "identity" else self.kernel_initializer
        self.kernel = self.add_weight("kernel", [self.num_domains, d, self.units], initializer=init)
        self.bias = (self.add_weight("bias", [self.num_domains, self.units], initializer="zeros")
                     if self.use_bias else None)
        super().build(input_shape)

    def call(self, inputs):
        x, domain = inputs
        domain = domain_index(domain, self.num_domains, "DomainLinearMaps")
        out = _select_domain(tf.einsum("bi,kio->bko", x, self.kernel), domain)
        return out if self.bias is None else out + tf.gather(self.bias, domain)

    def _check_domain(self, domain: int) -> int:
        if not self.built:
            raise RuntimeError("DomainLinearMaps: call the layer (or restore the model) before initialising a domain")
        if not 0 <= int(domain) < self.num_domains:
            raise ValueError(f"DomainLinearMaps: domain {domain} is outside [0, {self.num_domains})")
        return int(domain)

    def _set_domain(self, var, domain: int, value) -> None:
        var.assign(tf.tensor_scatter_nd_update(var, [[domain]], tf.cast(value, var.dtype)[None]))

    def init_domain_from_mean(self, new_domain: int, from_domains: Sequence[int] | None = None) -> None:
        """W_new = mean_{j in from} W_j, c_new = mean_{j in from} c_j (default from: every other domain)."""
        new = self._check_domain(new_domain)
        src = [d for d in range(self.num_domains) if d != new] if from_domains is None else list(from_domains)
        src = [self._check_domain(d) for d in src]
        if not src or new in src:
            raise ValueError(f"DomainLinearMaps: from_domains must be non-empty and exclude the new domain {new}, "
                             f"got {src}")
        for var in [self.kernel] + ([self.bias] if self.bias is not None else []):
            self._set_domain(var, new, tf.reduce_mean(tf.gather(var, src), axis=0))

    def init_domain_identity(self, new_domain: int) -> None:
        """W_new = I (rectangular), c_new = 0: the new domain starts in the shared space unchanged."""
        new = self._check_domain(new_domain)
        self._set_domain(self.kernel, new, tf.eye(self.kernel.shape[1], self.kernel.shape[2]))
        if self.bias is not None:
            self._set_domain(self.bias, new, tf.zeros([self.bias.shape[1]]))

    def get_config(self):
        return {**super().get_config(), "num_domains": self.num_domains, "units": self.units,
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer}


def _mlp(units: Sequence[int], prefix: str) -> list:
    return [keras.layers.Dense(u, activation="relu", name=f"{prefix}_dense{i}") for i, u in enumerate(units)]


def _run(layers, h):
    for layer in layers:
        h = layer(h)
    return h


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class PLE(keras.layers.Layer):
    """Progressive Layered Extraction (Tang et al., RecSys 2020): `num_levels` stacked CGC levels; level l has
    `num_task_experts` experts per task and `num_shared_experts` shared experts (relu MLPs of `expert_units`).

        task t at level l:  y_t^l = sum_i softmax(W_t^l y_t^{l-1})_i  e_i(.)  over [task t's experts, shared experts]
        shared at level l:  y_s^l = sum_i softmax(W_s^l y_s^{l-1})_i  e_i(.)  over [every task's experts, shared]
        (y^0 = x; each expert reads its own branch's input; the last level has no shared gate)

    Input x [B, d]; output: a list of num_tasks tensors [B, expert_units[-1]], one per task tower.
    """

    def __init__(self, num_tasks: int = 2, num_levels: int = 2, num_shared_experts: int = 1,
                 num_task_experts: int = 1, expert_units: Sequence[int] = (64,), dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_tasks, self.num_levels = int(num_tasks), int(num_levels)
        self.num_shared_experts, self.num_task_experts = int(num_shared_experts), int(num_task_experts)
        self.expert_units, self.dropout = [int(u) for u in expert_units], float(dropout)
        if min(self.num_tasks, self.num_levels, self.num_shared_experts + self.num_task_experts) < 1:
            raise ValueError("PLE: num_tasks, num_levels and the number of experts per gate must be >= 1")
        T, S, E = self.num_tasks, self.num_shared_experts, self.num_task_experts
        self.task_experts = [[[_mlp(self.expert_units, f"l{l}_task{t}_expert{e}") for e in range(E)] for t in range(T)]
                             for l in range(self.num_levels)]
        self.shared_experts = [[_mlp(self.expert_units, f"l{l}_shared_expert{e}") for e in range(S)]
                               for l in range(self.num_levels)]
        self.task_gates = [[keras.layers.Dense(E + S, activation="softmax", name=f"l{l}_task{t}_gate")
                            for t in range(T)] for l in range(self.num_levels)]
        self.shared_gates = [keras.layers.Dense(T * E + S, activation="softmax", name=f"l{l}_shared_gate")
                             for l in range(self.num_levels - 1)]
        self.drop = keras.layers.Dropout(self.dropout)

    def call(self, x, training=None):
        task_in, shared_in = [x] * self.num_tasks, x
        for level in range(self.num_levels):
            def expert(layers, h):
                return self.drop(_run(layers, h), training=training)
            shared = [expert(e, shared_in) for e in self.shared_experts[level]]
            own = [[expert(e, task_in[t]) for e in experts] for t, experts in enumerate(self.task_experts[level])]
            mix = [tf.einsum("be,bed->bd", gate(task_in[t]), tf.stack(own[t] + shared, axis=1))
                   for t, gate in enumerate(self.task_gates[level])]
            if level < self.num_levels - 1:
                every = [o for outs in own for o in outs] + shared
                shared_in = tf.einsum("be,bed->bd", self.shared_gates[level](shared_in), tf.stack(every, axis=1))
            task_in = mix
        return task_in

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "num_levels": self.num_levels,
                "num_shared_experts": self.num_shared_experts, "num_task_experts": self.num_task_experts,
                "expert_units": self.expert_units, "dropout": self.dropout}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class STARTopology(keras.layers.Layer):
    """STAR's star-topology FCN (Sheng et al., CIKM 2021). Inputs: (x [B, d], domain [B] int).

        level l, domain p:  h^l = act((W^l * W_p^l)^T h^{l-1} + b^l + b_p^l)   (* elementwise; act on every level)

    Domain-specific kernels start at ones and biases at zeros ([inferred]; the paper does not say), so every domain
    begins with the shared weights. partitioned_norm=True first applies STAR's Partitioned Normalization to x:

        x' = (gamma * gamma_p) * (x - mu_p) / sqrt(var_p + eps) + (beta + beta_p)

    with mu_p, var_p the batch statistics of domain p's rows in training (batches here mix domains; the paper's are
    single-domain), and per-domain moving averages (momentum `norm_momentum`) at inference.
    """

    def __init__(self, num_domains: int, units: Sequence[int] = (64, 32), activation: str = "relu",
                 partitioned_norm: bool = False, norm_momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        if int(num_domains) < 1 or not units:
            raise ValueError(f"STARTopology: num_domains must be >= 1 and units non-empty, got {num_domains}, {units}")
        self.num_domains, self.units, self.activation = int(num_domains), [int(u) for u in units], activation
        self.partitioned_norm, self.norm_momentum, self.epsilon = (bool(partitioned_norm), float(norm_momentum),
                                                                   float(epsilon))
        self.act = keras.activations.get(activation)

    def build(self, input_shape):
        d, D = int(input_shape[0][-1]), self.num_domains
        self.shared_kernels, self.shared_biases, self.domain_kernels, self.domain_biases = [], [], [], []
        for level, (i, o) in enumerate(zip([d] + self.units, self.units)):
            self.shared_kernels.append(self.add_weight(f"shared_kernel{level}", [i, o], initializer="glorot_uniform"))
            self.shared_biases.append(self.add_weight(f"shared_bias{level}", [o], initializer="zeros"))
            self.domain_kernels.append(self.add_weight(f"domain_kernel{level}", [D, i, o], initializer="ones"))
            self.domain_biases.append(self.add_weight(f"domain_bias{level}", [D, o], initializer="zeros"))
        if self.partitioned_norm:
            self.gamma = self.add_weight("pn_gamma", [d], initializer="ones")
            self.beta = self.add_weight("pn_beta", [d], initializer="zeros")
            self.domain_gamma = self.add_weight("pn_domain_gamma", [D, d], initializer="ones")
            self.domain_beta = self.add_weight("pn_domain_beta", [D, d], initializer="zeros")
            self.moving_mean = self.add_weight("pn_moving_mean", [D, d], initializer="zeros", trainable=False)
            self.moving_var = self.add_weight("pn_moving_var", [D, d], initializer="ones", trainable=False)
        super().build(input_shape)

    def effective_kernel(self, level: int, domain: int) -> tf.Tensor:
        """W^l * W_p^l, the kernel domain p's rows go through at `level`."""
        return self.shared_kernels[level] * self.domain_kernels[level][domain]

    def _batch_stats(self, x, domain):
        onehot = tf.one_hot(domain, self.num_domains, dtype=x.dtype)                            # [B, D]
        counts = tf.reduce_sum(onehot, axis=0)[:, None]
        mean = tf.math.divide_no_nan(tf.matmul(onehot, x, transpose_a=True), counts)          # [D, d]
        var = tf.math.divide_no_nan(tf.matmul(onehot, tf.square(x - tf.gather(mean, domain)), transpose_a=True),
                                    counts)
        present, m = counts > 0, self.norm_momentum             # only domains seen in this batch move their averages
        self.moving_mean.assign(tf.where(present, m * self.moving_mean + (1 - m) * mean, self.moving_mean))
        self.moving_var.assign(tf.where(present, m * self.moving_var + (1 - m) * var, self.moving_var))
        return mean, var

    def _normalise(self, x, domain, training):
        mean, var = tf.__internal__.smart_cond.smart_cond(
            training if training is not None else False,
            lambda: self._batch_stats(x, domain), lambda: (tf.identity(self.moving_mean), tf.identity(self.moving_var)))
        z = (x - tf.gather(mean, domain)) * tf.math.rsqrt(tf.gather(var, domain) + self.epsilon)
        return self.gamma * tf.gather(self.domain_gamma, domain) * z + self.beta + tf.gather(self.domain_beta, domain)

    def call(self, inputs, training=None):
        h, domain = inputs
        domain = domain_index(domain, self.num_domains, "STARTopology")
        if self.partitioned_norm:
            h = self._normalise(h, domain, training)
        for level in range(len(self.units)):
            kernels = self.shared_kernels[level][None] * self.domain_kernels[level]                 # [D, i, o]
            h = _select_domain(tf.einsum("bi,kio->bko", h, kernels), domain)
            h = self.act(h + self.shared_biases[level] + tf.gather(self.domain_biases[level], domain))
        return h

    def get_config(self):
        return {**super().get_config(), "num_domains": self.num_domains, "units": self.units,
                "activation": self.activation, "partitioned_norm": self.partitioned_norm,
                "norm_momentum": self.norm_momentum, "epsilon": self.epsilon}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class DomainRowCounter(keras.layers.Layer):
    """Counts the training examples of each domain row (a non-trainable [num_rows] int64 variable) and returns the
    rows unchanged. What a model trained on, read back after a restore: a row still at 0 is a domain no training
    example reached (the cold-start domain left out of pretraining, the OOV row an unknown domain lands on), whose
    weights are then set from the trained rows (`seen()`). Only calls with training=True count; the variable sums
    over replicas (ON_READ, SUM), as Keras metrics do."""

    def __init__(self, num_rows: int, **kwargs):
        super().__init__(**kwargs)
        self.num_rows = int(num_rows)

    def build(self, input_shape):
        self.counts = self.add_weight("counts", [self.num_rows], dtype=tf.int64, initializer="zeros",
                                      trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                                      aggregation=tf.VariableAggregation.SUM)
        super().build(input_shape)

    def call(self, rows, training=None):
        def count():
            flat = tf.reshape(tf.cast(rows, tf.int32), [-1])
            add = tf.math.bincount(flat, minlength=self.num_rows, maxlength=self.num_rows, dtype=tf.int64)
            with tf.control_dependencies([self.counts.assign_add(add)]):
                return tf.identity(rows)
        return tf.__internal__.smart_cond.smart_cond(training if training is not None else False, count,
                                                     lambda: tf.identity(rows))

    def seen(self):
        """bool numpy [num_rows]: rows some training example has reached."""
        return self.counts.numpy() > 0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_rows": self.num_rows}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class RandomTextVectors(keras.layers.Layer):
    """The "random text" ablation: each distinct text vector is replaced by a fixed random unit vector of the same
    width (its float bits hashed into a frozen table of `table_rows` random rows; the zero vector of an empty text
    stays zero). Equal texts still share a vector, as an id would, but what the encoder knew about the words is
    gone: an ablation of the LLM's knowledge that keeps the model's shape. The table is drawn from `seed`."""

    def __init__(self, table_rows: int = 1 << 16, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.table_rows, self.seed = int(table_rows), int(seed)

    def build(self, input_shape):
        d = int(input_shape[-1])
        table = tf.random.stateless_normal([self.table_rows, d], seed=[self.seed, 7])
        self.table = self.add_weight("table", [self.table_rows, d], trainable=False,
                                     initializer=keras.initializers.Constant(tf.math.l2_normalize(table, -1).numpy()))
        mult = tf.random.stateless_uniform([d], seed=[self.seed, 11], minval=1, maxval=(1 << 31) - 1, dtype=tf.int64)
        self.multipliers = mult * 2 + 1                         # odd: every bit of a float moves the hash
        super().build(input_shape)

    def call(self, x):
        bits = tf.cast(tf.bitcast(tf.cast(x, tf.float32), tf.int32), tf.int64)
        h = tf.reduce_sum(bits * self.multipliers, axis=-1)
        rows = tf.math.floormod(tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 29)), self.table_rows)
        present = tf.cast(tf.reduce_any(tf.not_equal(x, 0.0), axis=-1, keepdims=True), x.dtype)
        return tf.cast(tf.gather(self.table, rows), x.dtype) * present

    def get_config(self):
        return {**super().get_config(), "table_rows": self.table_rows, "seed": self.seed}


__all__ = ["AspectGatingFusion", "DomainLinearMaps", "DomainRowCounter", "PLE", "RandomTextVectors", "STARTopology",
           "GATINGS"]
