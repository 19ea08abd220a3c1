"""Case exports for spreadsheets: CSV (UTF-8 with a BOM, for Excel) and .xlsx.

An export carries what a digest carries and the deadlines, nothing more: reference, status,
owner, risk, name, phone, commune, district and dates; never an ID number or an address. For an
``observer`` unit the personal columns are left out altogether.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from sqlalchemy.orm import Session

from mailtracker.config import Config, Language
from mailtracker.services.sheets import text_cell
from mailtracker.store.models import Case
from mailtracker.store.queries import list_cases

Format = Literal["csv", "xlsx"]
FORMATS: tuple[Format, ...] = ("csv", "xlsx")
Cell = str | int | dt.date | dt.datetime | None

PERSONAL_COLUMNS = frozenset({"full_name", "phone", "commune", "district"})
TIMESTAMP_COLUMNS = frozenset({"received_at", "verify_by", "next_followup_due"})
DATE_COLUMNS = frozenset({"period_start", "period_end"})
DATETIME_FORMAT = "yyyy-mm-dd hh:mm"
DATE_FORMAT = "yyyy-mm-dd"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ref", "Mã", "Ref"),
    ("status", "Trạng thái", "Status"),
    ("outcome", "Kết quả", "Outcome"),
    ("owner_unit", "Đơn vị phụ trách", "Owner"),
    ("risk", "Nguy cơ", "Risk"),
    ("full_name", "Họ tên", "Name"),
    ("phone", "Điện thoại", "Phone"),
    ("commune", "Xã/Phường", "Commune"),
    ("district", "Quận/Huyện", "District"),
    ("received_at", "Nhận lúc", "Received"),
    ("verify_by", "Xác minh trước", "Verify by"),
    ("period_start", "Bắt đầu", "Period start"),
    ("period_end", "Kết thúc", "Period end"),
    ("next_followup_due", "Theo dõi tiếp trước", "Next follow-up"),
)
"""(key, Vietnamese header, English header) of every column, in order."""


@dataclass(frozen=True, slots=True)
class Export:
    """The exported table: column keys, headers in the chosen language, and rows of cells.

    Timestamps are naive local times in ``tracker.timezone`` (spreadsheets have no zones).
    """

    keys: tuple[str, ...]
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


def _local(value: dt.datetime | None, tz: ZoneInfo) -> dt.datetime | None:
    return value.astimezone(tz).replace(tzinfo=None) if value is not None else None


def _value(case: Case, key: str, tz: ZoneInfo) -> Cell:
    value = getattr(case, key)
    if key in TIMESTAMP_COLUMNS:
        return _local(value, tz)
    assert value is None or isinstance(value, str | int | dt.date)
    return value


def build_export(
    cases: Sequence[Case], tz: ZoneInfo, *, language: Language, personal: bool = True
) -> Export:
    """The table of ``cases``; without ``personal``, no name, phone, commune or district."""
    columns = [column for column in COLUMNS if personal or column[0] not in PERSONAL_COLUMNS]
    keys = tuple(key for key, _, _ in columns)
    headers = tuple(vi if language == "vi" else en for _, vi, en in columns)
    rows = tuple(tuple(_value(case, key, tz) for key in keys) for case in cases)
    return Export(keys, headers, rows)


def export_cases(
    session: Session,
    config: Config,
    *,
    unit: str | None = None,
    status: str | None = None,
    language: Language | None = None,
) -> Export:
    """The cases ``unit`` can see (all without it), optionally only in ``status``.

    The language defaults to the unit's, else the tracker's; an observer unit gets no
    personal columns.
    """
    settings = config.unit(unit) if unit is not None else None
    chosen: Language = language or (
        settings.language if settings is not None else config.tracker.language
    )
    cases = list_cases(session, unit=settings.id if settings else None, status=status)
    personal = settings is None or settings.role != "observer"
    return build_export(cases, config.tracker.timezone, language=chosen, personal=personal)


def _text(value: str) -> str:
    """A CSV cell's text that a spreadsheet never runs as a formula (a leading quote)."""
    cleaned: str = ILLEGAL_CHARACTERS_RE.sub(" ", value)
    return "'" + cleaned if cleaned.startswith(_FORMULA_START) else cleaned


def _csv_cell(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, int):
        return str(value)
    return _text(value)


def to_csv(table: Export) -> bytes:
    """CSV in UTF-8 with a byte-order mark (so Excel reads Vietnamese correctly), CRLF lines."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(table.headers)
    writer.writerows([_csv_cell(value) for value in row] for row in table.rows)
    return buffer.getvalue().encode("utf-8-sig")


def _xlsx_cell(sheet: WriteOnlyWorksheet, value: Cell) -> Cell | WriteOnlyCell:
    """A cell of the sheet: text as text (``text_cell``: never a formula), dates and
    timestamps with a number format."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, str):
        return text_cell(sheet, value)
    cell = WriteOnlyCell(sheet, value)
    cell.number_format = DATETIME_FORMAT if isinstance(value, dt.datetime) else DATE_FORMAT
    return cell


def to_xlsx(table: Export) -> bytes:
    """An .xlsx workbook: a bold header row, frozen below it, with a filter; dates and
    timestamps as real spreadsheet dates with a number format; text stored as text.

    Rows are streamed by a write-only workbook, so column widths and panes come first."""
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("cases")
    for index, (key, header) in enumerate(zip(table.keys, table.headers, strict=True), start=1):
        width = 17 if key in TIMESTAMP_COLUMNS else 12 if key in DATE_COLUMNS else 0
        longest = max([len(header), *(len(str(row[index - 1] or "")) for row in table.rows)])
        sheet.column_dimensions[get_column_letter(index)].width = min(40, max(width, longest + 2))
    sheet.freeze_panes = "B2"
    bold = Font(bold=True)
    header_cells = []
    for header in table.headers:
        cell = WriteOnlyCell(sheet, header)
        cell.font = bold
        header_cells.append(cell)
    sheet.append(header_cells)
    for row in table.rows:
        sheet.append([_xlsx_cell(sheet, value) for value in row])
    last_column = get_column_letter(max(len(table.headers), 1))
    sheet.auto_filter.ref = f"A1:{last_column}{len(table.rows) + 1}"
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def render_export(table: Export, file_format: Format) -> bytes:
    """The table as the bytes of a ``csv`` or ``xlsx`` file."""
    return to_csv(table) if file_format == "csv" else to_xlsx(table)
