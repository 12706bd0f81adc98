"""Text cells of the CSV files we write from data (sample ids, transcripts), safe to open in a spreadsheet.

Excel, LibreOffice and Google Sheets read a cell that begins with `=`, `+`, `-` or `@` (or a tab or
carriage return before one) as a formula, so an id such as `=HYPERLINK("http://...")` in a feature
file would run as one when a user opens `--predictions` or `pseudo_labels.csv`. The usual remedy
(OWASP, "CSV injection") is a leading `'`, which spreadsheets take as "text follows". A cell that
already begins with `'` gets one more, so `text_cell` undoes `csv_text` exactly when we read our own
files back.
"""

from __future__ import annotations

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_text(value: object) -> str:
    """`value` as a CSV text cell that no spreadsheet evaluates."""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def text_cell(cell: str) -> str:
    """The text `csv_text` wrote."""
    return cell.removeprefix("'")
