"""The report page as data (sections of blocks) and its one Jinja2 template.

Sections build plain blocks (a note, a table of cells, a figure, ...); `templates/report.html` turns
them into HTML with autoescaping on, so no text read from a run (a row name, a sample id, raw text)
is ever written into the page unescaped, and no section builds HTML by hand.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jinja2


@dataclass
class Cell:
    """One table cell: its text and how it is shown."""

    text: str
    best: bool = False  # the best mean of its column (bold)
    wrong: bool = False  # a wrong verdict (red)
    prose: bool = False  # free text such as a transcript: left-aligned, wrapped


@dataclass
class Text:
    """A run of text, shown by its kind: a grey note, an h3 heading, a paragraph, or a command to copy."""

    kind: str  # "note" | "heading" | "paragraph" | "command"
    text: str


def note(text: str) -> Text:
    return Text("note", text)


def heading(text: str) -> Text:
    return Text("heading", text)


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    left: int = 1  # the first `left` columns are labels (left-aligned)
    fold: str | None = None  # when set, the table folds away under this summary line
    kind: ClassVar[str] = "table"


@dataclass
class Figure:
    file: str  # the PNG's name beside the page
    png_base64: str  # the same PNG, embedded so the page stands alone
    caption: str
    kind: ClassVar[str] = "figure"


Block = Text | Table | Figure


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1, fold: str | None = None) -> Table:
    """A table whose plain values become cells (a `Cell` is kept as it is)."""
    return Table([str(h) for h in header],
                 [[v if isinstance(v, Cell) else Cell(str(v)) for v in row] for row in rows], left, fold)


@dataclass
class Section:
    title: str
    blocks: list[Block]


@dataclass
class Page:
    """Collects sections and figures (PNG bytes, written beside the page and embedded in it)."""

    sections: list[Section] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def section(self, title: str, blocks: list[Block]) -> None:
        self.sections.append(Section(title, blocks))

    def figure(self, name: str, png: bytes, caption: str) -> Figure:
        """Register a PNG under a file name made from `name` (unsafe characters -> '_')."""
        file = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_")[:120] + ".png"
        self.figures[file] = png
        return Figure(file, base64.b64encode(png).decode("ascii"), caption)

    def render(self, title: str, subtitle: str) -> str:
        return _template().render(title=title, subtitle=subtitle, sections=self.sections)


def _template() -> jinja2.Template:
    # autoescape on for every value; StrictUndefined: a misspelt field fails the report, not blanks it
    env = jinja2.Environment(loader=jinja2.PackageLoader("affectus.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template("report.html")
