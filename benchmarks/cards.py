"""Writing a benchmark's table into its paper card (seeds/papers/NAME.md), between two marker lines."""
from __future__ import annotations

import os
from pathlib import Path

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
