"""Tables in mail: HTML tables, ``.xlsx`` and ``.csv`` attachments -> raw report fields.

Every reader returns a list of ``{canonical field: raw value}`` mappings, one per person,
ready for :func:`mailtracker.domain.reports.build_report`. Readers are bounded: rows, cells,
bytes and the uncompressed size of a workbook are capped, so hostile input stays cheap.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
import zipfile
from collections.abc import Iterable, Sequence

from bs4 import BeautifulSoup, Tag
from bs4.filter import SoupStrainer

from mailtracker.domain.reports import field_for_label
from mailtracker.domain.text import nfc

Fields = dict[str, str]

MAX_ROWS = 5000
MAX_COLUMNS = 64
MAX_CELL_CHARS = 2000
MAX_HTML_CHARS = 2_000_000
MAX_CSV_BYTES = 5_000_000
MAX_XLSX_UNCOMPRESSED = 50_000_000
MAX_HEADER_SCAN = 10
_DATE_FIELDS = ("arrival_date", "report_date")
_SERIAL_DATE = re.compile(r"\d{5}(?:\.\d+)?")
"""A date kept as a plain number in a workbook (an Excel serial: 10000 is 1927, 99999 2173)."""


class TableError(ValueError):
    """A table attachment that was refused or could not be read."""


def _cell_text(value: object) -> str:
    """A cell's value as text; dates as ISO, whole floats without ``.0``."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return nfc(str(value)[:MAX_CELL_CHARS])


def _header_map(row: Sequence[str]) -> dict[int, str] | None:
    """Column index -> field when ``row`` is a header row naming two fields or more."""
    columns: dict[int, str] = {}
    for index, cell in enumerate(row):
        name = field_for_label(cell) if cell else None
        if name is not None and name not in columns.values():
            columns[index] = name
    return columns if len(columns) >= 2 else None


def rows_to_fields(rows: Iterable[Sequence[str]]) -> list[Fields]:
    """One mapping per data row of a table whose header row (among the first rows) names fields."""
    header: dict[int, str] | None = None
    people: list[Fields] = []
    for number, row in enumerate(rows):
        if number >= MAX_ROWS:
            break
        if header is None:
            if number >= MAX_HEADER_SCAN:
                break
            header = _header_map(row)
            continue
        if not any(cell.strip() for cell in row):
            continue
        values = {name: row[index] for index, name in header.items() if index < len(row)}
        if any(value.strip() for value in values.values()):
            people.append(values)
    return people


def _pairs_to_fields(rows: Iterable[Sequence[str]]) -> Fields:
    """A label/value table: each ``label | value`` pair of cells (several pairs a row allowed)."""
    found: Fields = {}
    for row in rows:
        index = 0
        while index < len(row) - 1:
            name = field_for_label(row[index])
            if name is not None and field_for_label(row[index + 1]) is None:
                found.setdefault(name, row[index + 1])
                index += 2
            else:
                index += 1
    return found


def _html_rows(table: Tag) -> list[list[str]]:
    rows: list[list[str]] = []
    for tr in table.find_all("tr", limit=MAX_ROWS):
        cells = tr.find_all(["td", "th"], limit=MAX_COLUMNS)
        rows.append([_cell_text(cell.get_text(" ", strip=True)) for cell in cells])
    return rows


_TABLES = SoupStrainer("table")
"""Only the tables of a body are built into a tree: the rest is not read."""


def fields_from_html(html: str) -> list[Fields]:
    """Reports in the HTML tables of a body: header-row tables give one mapping per row,
    two-column ``label | value`` tables one mapping each. Layout tables that merely contain
    other tables are skipped: only innermost tables are read."""
    soup = BeautifulSoup(html[:MAX_HTML_CHARS], "html.parser", parse_only=_TABLES)
    found: list[Fields] = []
    for table in soup.find_all("table"):
        if table.find("table") is not None:
            continue
        rows = _html_rows(table)
        people = rows_to_fields(rows)
        if people:
            found.extend(people)
            continue
        pairs = _pairs_to_fields(rows)
        if pairs:
            found.append(pairs)
    return found


def html_to_text(html: str) -> str:
    """Readable text of an HTML body: one line per block or ``<br>``, cells separated by tabs."""
    soup = BeautifulSoup(html[:MAX_HTML_CHARS], "html.parser")
    for hidden in soup.find_all(["script", "style", "head", "title"]):
        hidden.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for cell in soup.find_all(["td", "th"]):
        cell.append("\t")
    blocks = ["p", "div", "tr", "li", "table", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6"]
    for block in soup.find_all(blocks):
        block.append("\n")
    return soup.get_text()


def _serial_dates(people: list[Fields], epoch: dt.datetime) -> list[Fields]:
    """Date columns whose cells hold the date as a number (not formatted as a date in the
    workbook) read as the dates they are."""
    from openpyxl.utils.datetime import from_excel

    for person in people:
        for name in _DATE_FIELDS:
            value = person.get(name, "")
            if _SERIAL_DATE.fullmatch(value):
                person[name] = from_excel(float(value), epoch=epoch).date().isoformat()
    return people


def fields_from_xlsx(data: bytes) -> list[Fields]:
    """People in every sheet of an ``.xlsx`` workbook, refusing oversized (zip-bomb) files."""
    from openpyxl import load_workbook

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            uncompressed = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise TableError(f"not an xlsx workbook: {exc}") from exc
    if uncompressed > MAX_XLSX_UNCOMPRESSED:
        raise TableError(f"xlsx refused: {uncompressed} bytes uncompressed")
    try:
        workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types on damaged files
        raise TableError(f"unreadable xlsx: {type(exc).__name__}") from exc
    found: list[Fields] = []
    try:
        for sheet in workbook.worksheets:
            rows = (
                [_cell_text(value) for value in row]
                for row in sheet.iter_rows(
                    max_row=MAX_ROWS + 1, max_col=MAX_COLUMNS, values_only=True
                )
            )
            found.extend(_serial_dates(rows_to_fields(rows), workbook.epoch))
    except Exception as exc:
        raise TableError(f"unreadable xlsx sheet: {type(exc).__name__}") from exc
    finally:
        workbook.close()
    return found


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Text of bytes: BOM first, then the declared charset, UTF-8, then Vietnamese cp1258."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    for candidate in (declared, "utf-8", "cp1258"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, ValueError):
            continue
    return data.decode("utf-8", errors="replace")


def fields_from_csv(data: bytes, charset: str | None = None) -> list[Fields]:
    """People in a ``.csv`` file; the delimiter (``,`` ``;`` tab ``|``) is sniffed, then tried."""
    if len(data) > MAX_CSV_BYTES:
        raise TableError(f"csv refused: {len(data)} bytes")
    text = decode_text(data, charset).replace("\x00", "")
    try:
        sniffed = csv.Sniffer().sniff(text[:5000], delimiters=",;\t|").delimiter
    except csv.Error:
        sniffed = ","
    for delimiter in dict.fromkeys((sniffed, ",", ";", "\t", "|")):
        try:
            reader = csv.reader(io.StringIO(text), delimiter=delimiter)
            people = rows_to_fields([_cell_text(c) for c in row[:MAX_COLUMNS]] for row in reader)
        except csv.Error as exc:
            raise TableError(f"unreadable csv: {exc}") from exc
        if people:
            return people
    return []
