"""A paper benchmark's bookkeeping: its results.json (read, updated atomically) and its table in the paper card
(seeds/papers/NAME.md, between two marker lines)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

PAPERS = Path(__file__).resolve().parents[1] / "seeds" / "papers"


def write_block(card: str, mark: str, command: str, text: str, heading: str = "") -> Path:
    """Replace the block between the two `mark` lines of seeds/papers/`card` with `command` (a line, already
    formatted) and `text`; a card without the block gets it appended (after `heading`, when given). Atomic."""
    path = PAPERS / card
    body = path.read_text()
    block = f"{mark}\n{command}\n\n{text}\n{mark}"
    if body.count(mark) == 2:
        head, _, rest = body.partition(mark)
        body = head + block + rest.partition(mark)[2]
    else:
        body = body.rstrip() + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(body)
    os.replace(tmp, path)
    return path


def load_results(path: Path) -> dict:
    """A benchmark's results.json ({"runs": ..., "analysis": ...}; empty ones when it does not exist yet)."""
    return json.loads(path.read_text()) if path.exists() else {"runs": {}, "analysis": {}}


def save_results(path: Path, update: Callable[[dict], None]) -> None:
    """Read, `update(stored)`, replace atomically: what another benchmark process on the same file wrote in
    between stays (each process writes only its own rows)."""
    stored = load_results(path)
    update(stored)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(stored, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def mean_range(values) -> str:
    """A table cell: the mean of the finite values, with their min-max when there are several ("-" for none)."""
    import numpy as np

    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    return f"{float(np.mean(values)):.4f}" + (f" ({min(values):.4f}-{max(values):.4f})" if len(values) > 1 else "")
