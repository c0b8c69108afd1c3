"""Training throughput of DIN on taobao-head: tfrec_zoo against DeepCTR (PyPI `deepctr==0.9.3`), same data.

    .venv/bin/pip install deepctr==0.9.3 --no-deps            # once (the `bench` extra)
    python benchmarks/train_throughput.py                     # 3 rounds x 30 steps, batch 1024
    python benchmarks/train_throughput.py --steps 60 --rounds 5 --json benchmarks/out/train_throughput.json

Both sides, in one process, on the same tf_keras 2.20 runtime:

* tfrec_zoo: `din` built from the registry with training/experiments/din-taobao-head.yaml's params and compiled by
  `training.trainer.compile_model` (Adam 1e-3; BCE on `click`, and on `buy` with loss weight 0, masked by click;
  AUC(2000 thresholds) per task), fed by `train_dataset(exp, data, repeat=True, features=<the model inputs>)` as the trainer does, i.e.
  `DatasetDir.dataset("train", B, shuffle_buffer=100_000, seed=0, repeat=True)`: gzip TFRecords -> shuffle ->
  batch -> parse_example -> pad to 539 -> prefetch. Raw ids go through the in-graph IntegerLookup.
* DeepCTR: `deepctr.models.DIN` over the same features (user_id, item_id, category_id and the history's item and
  category sequences of max_len 539; the history's behaviour and gap fields are not used by tfrec_zoo's DIN
  either), the same embedding sizes (from the spec), attention units (80, 40) with att_activation="sigmoid",
  DNN (200, 80) relu, no dropout, l2_reg_embedding=0, Adam 1e-3, binary cross-entropy and AUC(2000 thresholds).
  Its data: the SAME train TFRecords decoded once (via make_dataset, no shuffle) into numpy, ids label-encoded with
  the dataset's vocabularies to 1..n (0 = padding / unknown, DeepCTR's mask_zero convention). It is fed the way
  `model.fit(x=dict of numpy arrays, y, batch_size=B, shuffle=True)` feeds it: the tf_keras data adapter that fit
  builds (index permutation -> batched gather -> prefetch). Rows are truncated to a multiple of B so that no
  partial batch enters the count (tfrec_zoo's repeat-then-batch has none either).

Timing: `model.make_train_function()` (the exact step fit runs) driven on a persistent iterator, so the per-round
numbers are steady state (no fit() start-up, no shuffle-buffer refill). After `--warmup` steps per variant, each of
`--rounds` rounds times `--steps` steps of every variant, alternating which framework goes first. Variants:

  train     full training step fed by the framework's own input pipeline (the headline number)
  cached    the same train step fed one cached batch (Dataset.from_tensors(batch).repeat()): model cost alone
  pipeline  iterating the input pipeline alone (no model), after draining what prefetch had buffered

Besides examples/s, each variant's process CPU time per batch is reported (both cores count): on 2 cores the
input pipeline's CPU competes with the train step, so "train" is roughly "cached" plus the pipeline's CPU / 2.

DeepCTR 0.9.3 imports `tensorflow.python.keras.*`, which TF 2.20 no longer provides; `_import_deepctr` aliases
those modules to tf_keras (in sys.modules, before the import). Nothing in site-packages is edited.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfrec_zoo._tf import keras, tf  # noqa: E402
from tfrec_zoo.models import model_config  # noqa: E402
from training.experiment import load_experiment  # noqa: E402
from training.trainer import compile_model, resolve_dataset, train_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "training" / "experiments" / "din-taobao-head.yaml"
VARIANTS = ("train", "cached", "pipeline")
FRAMEWORKS = ("tfrec_zoo", "deepctr")
DRAIN = 20


def _import_deepctr():
    """Import deepctr 0.9.3 on TF 2.20: alias the removed `tensorflow.python.keras.*` modules to tf_keras."""
    import tf_keras

    for sub in ("", ".layers", ".models", ".regularizers", ".backend", ".initializers"):
        sys.modules["tensorflow.python.keras" + sub] = importlib.import_module("tf_keras" + sub) if sub else tf_keras
    try:
        import deepctr
    except ImportError:
        sys.exit("deepctr is not installed: .venv/bin/pip install deepctr==0.9.3 --no-deps "
                 "(its h5py==3.7.0 pin is not needed; it runs with this venv's h5py)")
    from deepctr.feature_column import SparseFeat, VarLenSparseFeat
    from deepctr.models import DIN

    return deepctr, SparseFeat, VarLenSparseFeat, DIN


# -- data ---------------------------------------------------------------------------------------------------------
def decode_for_deepctr(data, history: str, pairs: list[tuple[str, str]], users: str, batch_size: int):
    """The train split decoded once to numpy, ids label-encoded to 1..n (0 = pad / unknown); rows truncated to a
    multiple of `batch_size`. Returns (x dict, y, info)."""
    spec = data.spec
    seq = spec[history]
    cols = [users] + [q for q, _ in pairs] + [k for _, k in pairs]
    chunks: dict[str, list] = {c: [] for c in cols + [seq.length_name]}
    labels = []
    for feats, labs, *_ in data.dataset("train", 8192):
        for c in chunks:
            chunks[c].append(feats[c].numpy())
        labels.append(labs["click"].numpy())
    raw = {c: np.concatenate(v) for c, v in chunks.items()}
    n = (len(raw[users]) // batch_size) * batch_size
    length = raw[seq.length_name][:n]
    valid = np.arange(seq.max_len)[None, :] < length[:, None]
    x, oov = {}, {}
    for c in cols:
        vocab = np.asarray(data.artifacts.vocabs[spec.table_of(c)], dtype=np.int64)
        order = np.argsort(vocab, kind="stable")
        sorted_vocab = vocab[order]
        v = raw[c][:n]
        pos = np.clip(np.searchsorted(sorted_vocab, v), 0, len(vocab) - 1)
        found = sorted_vocab[pos] == v
        enc = np.where(found, order[pos] + 1, 0)   # IntegerLookup's order: vocabulary position + 1, OOV 0
        if enc.ndim == 2:
            enc = np.where(valid, enc, 0)
            oov[c] = int((~found & valid).sum())
        else:
            oov[c] = int((~found).sum())
        x[c] = enc.astype(np.int32)
    y = np.concatenate(labels)[:n].astype(np.float32)
    info = {"rows_used": n, "rows_in_split": data.rows("train"), "oov_ids": oov,
            "history_len_mean": round(float(length.mean()), 2), "history_len_max": int(length.max())}
    return x, y, info


# -- models -------------------------------------------------------------------------------------------------------
def build_deepctr(data, cfg, history, pairs, users, dc):
    _, SparseFeat, VarLenSparseFeat, DIN = dc
    spec = data.spec
    seq = spec[history]
    if any(k != "hist_" + q for q, k in pairs):  # DeepCTR's DIN finds a target's history by this name
        raise ValueError(f"DeepCTR's DIN needs history columns named hist_<target>, got {pairs}")

    def sparse(name, shared_with=None):
        table = spec.table_of(shared_with or name)
        return SparseFeat(name, data.artifacts.vocab_size(spec, table), spec.table_config(table).embedding_dim,
                          embedding_name=shared_with or name)

    # the history columns share the target's tables, as in tfrec_zoo (DeepCTR: same embedding_name)
    fcs = [sparse(users)] + [sparse(q) for q, _ in pairs]
    fcs += [VarLenSparseFeat(sparse(k, shared_with=q), maxlen=seq.max_len) for q, k in pairs]
    model = DIN(fcs, [q for q, _ in pairs], dnn_hidden_units=tuple(cfg.dnn_units),
                att_hidden_size=tuple(cfg.attention_units), att_activation=cfg.attention_activation,
                att_weight_normalization=cfg.attention_normalization == "softmax", l2_reg_embedding=0.0,
                dnn_dropout=cfg.dropout, seed=0)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.AUC(name="auc", num_thresholds=2000)])
    return model


def din_pairs(spec, cfg):
    """(history name, [(target column, history column)]) exactly as tfrec_zoo's din pairs them."""
    from tfrec_zoo.models.common import target_and_history

    _, history, _ = target_and_history(spec, cfg.target or None, cfg.history or None)
    scalars = {spec.table_of(f.name): f.name for f in spec.inputs if f.kind in ("id", "domain")}
    pairs = [(scalars[spec.table_of(sf.name)], sf.name) for sf in spec[history].fields
             if sf.kind == "id" and spec.table_of(sf.name) in scalars]
    return history, pairs


# -- timing -------------------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, name, model, dataset, batch_size):
        self.name, self.model, self.batch_size = name, model, batch_size
        self.it = iter(dataset)
        self.fn = model.make_train_function()
        self.cached_it = iter(tf.data.Dataset.from_tensors(next(self.it)).repeat())

    def _steps(self, it, n):
        logs = None
        for _ in range(n):
            logs = self.fn(it)
        float(logs["loss"])           # steps run synchronously on CPU; this just makes sure the last one finished

    def warmup(self, n):
        self._steps(self.it, n)
        self._steps(self.cached_it, n)
        for _ in range(n):
            next(self.it)

    def run(self, variant, n) -> tuple[float, float]:
        """(examples/s, process CPU ms per batch) of `n` steps (or batches) of `variant`."""
        if variant == "pipeline":
            for _ in range(DRAIN):    # drain batches prefetched while the previous variant ran
                next(self.it)
            t, c = time.perf_counter(), time.process_time()
            for _ in range(n):
                next(self.it)
        else:
            it = self.it if variant == "train" else self.cached_it
            t, c = time.perf_counter(), time.process_time()
            self._steps(it, n)
        return n * self.batch_size / (time.perf_counter() - t), 1e3 * (time.process_time() - c) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per variant before the rounds")
    ap.add_argument("--data", default="taobao-head", help="dataset directory or builder name")
    ap.add_argument("--json", default="benchmarks/out/train_throughput.json")
    args = ap.parse_args()
    bs = args.batch_size

    data = resolve_dataset(args.data, log=lambda *a: print(*a, file=sys.stderr))
    exp = load_experiment(EXPERIMENT, [f"batch_size={bs}"])
    cfg = model_config(exp.model, exp.params)
    history, pairs = din_pairs(data.spec, cfg)
    users = data.spec.keys["user"]
    dc = _import_deepctr()

    print(f"decoding {data.path}/train for DeepCTR ...", file=sys.stderr)
    t = time.perf_counter()
    x, y, info = decode_for_deepctr(data, history, pairs, users, bs)
    info["decode_s"] = round(time.perf_counter() - t, 1)
    print(f"  {info}", file=sys.stderr)

    tf.keras.utils.set_random_seed(exp.seed)
    zoo_model = compile_model(exp, data)
    zoo = Runner("tfrec_zoo", zoo_model, train_dataset(exp, data, repeat=True, features=list(zoo_model.input_names)), bs)
    dc_model = build_deepctr(data, cfg, history, pairs, users, dc)
    from tf_keras.src.engine import data_adapter

    # exactly the dataset model.fit(x=dict of numpy, y, batch_size=bs, shuffle=True, epochs=...) iterates
    handler = data_adapter.get_data_handler(x=x, y=y, batch_size=bs, epochs=10_000, shuffle=True, model=dc_model)
    dcr = Runner("deepctr", dc_model, handler._dataset, bs)
    runners = {"tfrec_zoo": zoo, "deepctr": dcr}
    params = {k: int(sum(np.prod(w.shape) for w in m.trainable_weights)) for k, m in
              (("tfrec_zoo", zoo_model), ("deepctr", dc_model))}
    print(f"trainable parameters: {params}", file=sys.stderr)

    print(f"warm-up: {args.warmup} steps per variant ...", file=sys.stderr)
    for r in runners.values():
        r.warmup(args.warmup)

    res = {fw: {v: [] for v in VARIANTS} for fw in FRAMEWORKS}
    cpu = {fw: {v: [] for v in VARIANTS} for fw in FRAMEWORKS}
    for rnd in range(args.rounds):
        order = FRAMEWORKS if rnd % 2 == 0 else FRAMEWORKS[::-1]
        for variant in VARIANTS:
            for fw in order:
                eps, cpu_ms = runners[fw].run(variant, args.steps)
                res[fw][variant].append(eps)
                cpu[fw][variant].append(cpu_ms)
        print(f"round {rnd + 1}: " + ", ".join(f"{fw} {v} {res[fw][v][-1]:.0f}" for v in VARIANTS for fw in FRAMEWORKS),
              file=sys.stderr)

    med = {fw: {v: statistics.median(res[fw][v]) for v in VARIANTS} for fw in FRAMEWORKS}
    cpu_med = {fw: {v: statistics.median(cpu[fw][v]) for v in VARIANTS} for fw in FRAMEWORKS}
    ratio = {v: med["tfrec_zoo"][v] / med["deepctr"][v] for v in VARIANTS}
    round_ratio = [a / b for a, b in zip(res["tfrec_zoo"]["train"], res["deepctr"]["train"])]

    print(f"\nDIN training on {data.spec.name}, batch {bs}, {args.rounds} rounds x {args.steps} steps "
          f"(examples/s; {os.cpu_count()} cores)\n")
    head = ("| framework | variant | " + " | ".join(f"round {i + 1}" for i in range(args.rounds))
            + " | median | CPU ms/batch |")
    print(head)
    print("|" + "---|" * (args.rounds + 4))
    for v in VARIANTS:
        for fw in FRAMEWORKS:
            print(f"| {fw} | {v} | " + " | ".join(f"{s:,.0f}" for s in res[fw][v])
                  + f" | {med[fw][v]:,.0f} | {cpu_med[fw][v]:.0f} |")
    print(f"\nratio tfrec_zoo / DeepCTR (medians): train {ratio['train']:.2f}x, cached step {ratio['cached']:.2f}x, "
          f"pipeline alone {ratio['pipeline']:.2f}x; train ratio per round: "
          + ", ".join(f"{r:.2f}" for r in round_ratio))
    print("\nbreakdown, ms per batch of " + str(bs) + " (medians):")
    breakdown = {}
    for fw in FRAMEWORKS:
        ms = {v: 1e3 * bs / med[fw][v] for v in VARIANTS}
        breakdown[fw] = {"train_ms": ms["train"], "cached_step_ms": ms["cached"],
                         "input_overhead_ms": ms["train"] - ms["cached"], "pipeline_alone_ms": ms["pipeline"],
                         "pipeline_cpu_ms": cpu_med[fw]["pipeline"]}
        print(f"  {fw:<9}: train step {ms['train']:6.0f} = model step on a cached batch {ms['cached']:6.0f} "
              f"+ input {ms['train'] - ms['cached']:+5.0f}   (input pipeline alone: {ms['pipeline']:.1f} ms wall, "
              f"{cpu_med[fw]['pipeline']:.1f} ms CPU per batch)")
    out = {"benchmark": "DIN training throughput, tfrec_zoo vs DeepCTR", "dataset": str(data.path),
           "batch_size": bs, "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
           "cores": os.cpu_count(), "tensorflow": tf.__version__, "deepctr": dc[0].__version__,
           "python": platform.python_version(), "trainable_params": params,
           "features": {"user": users, "pairs": pairs, "history_max_len": data.spec[history].max_len},
           "model": {"attention_units": list(cfg.attention_units), "attention_activation": cfg.attention_activation,
                     "dnn_units": list(cfg.dnn_units), "optimizer": "adam 1e-3", "loss": "binary cross-entropy"},
           "deepctr_data": info, "examples_per_s": res, "median": med, "cpu_ms_per_batch": cpu,
           "cpu_ms_per_batch_median": cpu_med, "ratio_tfrec_zoo_over_deepctr": ratio,
           "train_ratio_per_round": round_ratio, "breakdown_ms_per_batch": breakdown}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
