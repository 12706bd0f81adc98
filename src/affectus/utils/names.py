"""Names made safe for folders, files and anchors: an experiment's row and run folders, a report's
figure files and anchors all spell a label the same way."""

from __future__ import annotations

import re


def slugify(text: str) -> str:
    """'w/o PLGM' -> 'w-o-plgm', 'CMC+' -> 'cmc-plus': lower case, '+' spelt out (CMC+ is not CMC), runs of
    other characters -> '-'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower().replace("+", "-plus")).strip("-") or "run"
