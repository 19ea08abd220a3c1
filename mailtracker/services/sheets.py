"""Text cells of the ``.xlsx`` sheets mailtracker writes (the digest's and ``export``'s)."""

from __future__ import annotations

from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.worksheet._write_only import WriteOnlyWorksheet


def text_cell(sheet: WriteOnlyWorksheet, value: str) -> str | WriteOnlyCell:
    """``value`` as a text cell, control characters a sheet cannot hold replaced by spaces:
    never a formula, even when it starts with ``=``, and shown exactly as written."""
    text: str = ILLEGAL_CHARACTERS_RE.sub(" ", value)
    if not text.startswith("="):
        return text  # openpyxl reads only a leading "=" as a formula
    cell = WriteOnlyCell(sheet, text)
    cell.data_type = "s"
    return cell
