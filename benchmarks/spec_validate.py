"""How long `tfrec-zoo spec validate` takes as specs grow, and how fast a hostile spec is refused.

Specs of N input features (a fifth each: ids with a vocabulary, string multi-hots in 10 embedding groups, dense
floats, ids in one long `shares_embedding_with` chain, and 2-field histories reading earlier columns) are written
as YAML, then loaded, validated and fingerprinted as `spec validate` does. Validation must be linear in N: the run
fails when a size takes longer than a generous bound (`--ms-per-feature`, default 2 ms a feature, + 5 s), far
above what linear code needs and far below what the old quadratic lookups took (10k features: 35 s).
The billion-laughs file (~2 KB, 9^9 values once expanded) must be refused within a second.

    python benchmarks/spec_validate.py [--sizes 1000 10000 70000] [--json benchmarks/out/spec_validate.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tfrec_zoo.features import FeatureSpecError, load_spec


def write_spec(path: Path, n: int) -> None:
    lines = ["name: bench", "keys: {user: f0, item: f3}", "features:"]
    for i in range(n):
        r = i % 5
        if r == 0:
            lines.append(f"  - {{name: f{i}, kind: id, embedding_dim: 8, vocab: {{min_count: 2}}}}")
        elif r == 1:
            lines.append(f"  - {{name: f{i}, kind: multi_hot, dtype: string, embedding_group: g{i % 50}}}")
        elif r == 2:
            lines.append(f"  - {{name: f{i}, kind: dense, normalization: log1p}}")
        elif r == 3:
            lines.append(f"  - {{name: f{i}, kind: id, shares_embedding_with: f{i - 5 if i > 3 else 0}}}")
        else:
            lines.append(f"  - {{name: s{i}, kind: sequence, max_len: 5, fields: [{{name: h{i}, source: f{i - 4}, "
                         f"shares_embedding_with: f{i - 4}}}, {{name: d{i}, kind: dense, source: f{i - 2}}}]}}")
    lines.append("  - {name: click, kind: label}")
    path.write_text("\n".join(lines) + "\n")


def alias_bomb() -> str:
    levels = ["&a [" + ", ".join([f'"{"lol" * 50}"'] * 9) + "]"]
    levels += [f"&{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, 10)]
    return ("name: bomb\nfeatures:\n  - {name: item_id, kind: id}\n  - name: h\n    kind: sequence\n    max_len: 3\n"
            "    fields:\n      - name: h_item\n        padding: [" + ",\n          ".join(levels) + "]\n"
            "  - {name: y, kind: label}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 70000])
    ap.add_argument("--ms-per-feature", type=float, default=2.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"spec{n}.yaml"
            write_spec(path, n)
            t0 = time.perf_counter()
            spec = load_spec(path)
            fingerprint = spec.fingerprint           # `spec validate` prints it
            seconds = time.perf_counter() - t0
            bound = 5 + n * args.ms_per_feature / 1000
            ok &= seconds <= bound and len(spec.inputs) == n
            rows.append({"features": n, "bytes": path.stat().st_size, "seconds": round(seconds, 2),
                         "bound_s": round(bound, 1), "fingerprint": fingerprint[:12]})
            print(f"{n:>7} features  {path.stat().st_size / 2 ** 20:6.2f} MiB  {seconds:7.2f} s  (bound {bound:.0f} s)")
        bomb = Path(tmp) / "bomb.yaml"
        bomb.write_text(alias_bomb())
        t0 = time.perf_counter()
        try:
            load_spec(bomb)
            refused = ""
        except FeatureSpecError as e:
            refused = str(e)
        seconds = time.perf_counter() - t0
        ok &= bool(refused) and seconds < 1.0
        rows.append({"alias_bomb_bytes": bomb.stat().st_size, "seconds": round(seconds, 4), "error": refused})
        print(f"alias bomb ({bomb.stat().st_size} bytes): refused in {seconds * 1000:.1f} ms: {refused or 'NOT REFUSED'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print("ok" if ok else "FAILED: a size took longer than its bound, or the bomb was not refused within 1 s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
