"""The new text of a reply: the body without quoted mail, quote headers and signatures.

Generic quote strippers only know English clients; the rules here also cover the Vietnamese
Gmail, Outlook and Apple Mail headers the units' staff send, and the tracker's own marker line.
"""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, Tag

from mailtracker.domain.text import fold

MARKER = "-- Trả lời phía trên dòng này / Reply above this line --"
_MARKER_HALVES = ("tra loi phia tren dong nay", "reply above this line")
_MARKER_FOLDED = fold(MARKER).strip("- ")
_MARKER_PIECE_MIN = 12

_QUOTE_PREFIX = re.compile(r"^(?:\s*>)+\s?")
_ATTRIBUTION_END = re.compile(r"(?:\bwrote|\bda viet)\s*:$")
_ATTRIBUTION_START = re.compile(r"^(?:on|vao)\s")
_ORIGINAL_MESSAGE = re.compile(
    r"^-{2,}\s*(?:original message|forwarded message|thu goc|tin nhan goc|thu chuyen tiep)"
    r"\s*-{2,}$"
)
_HEADER_FROM = re.compile(r"^\*?(?:from|tu)\s*:")
_HEADER_NEXT = re.compile(
    r"^\*?(?:sent|date|to|cc|subject|da gui|gui|ngay gui|ngay|den|chu de|tieu de)\s*:"
)
_HEADER_SENT_INLINE = re.compile(r"\s\*?(?:sent|da gui)\s*:")
_UNDERSCORES = re.compile(r"^_{10,}$")
_SENT_FROM = re.compile(
    r"^(?:sent from my(?:\s\S+){1,4}"
    r"|(?:sent from|gui tu)(?:\s\S+){0,3}\s(?:iphone|ipad|android|samsung|galaxy|xiaomi|oppo"
    r"|huawei|mobile|phone|dien thoai|di dong|thiet bi|outlook|mail|gmail|yahoo|windows)\b.*"
    r"|get outlook for\s\S+)$"
)
_HIDDEN_QUOTE = frozenset({"[quoted text hidden]", "[da an van ban trich dan]"})
_HEADER_LOOKAHEAD = 4

_BLOCK_TAGS = (
    "address", "article", "dd", "div", "dl", "dt", "footer", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hr", "li", "ol", "p", "pre", "section", "table", "tr", "ul",
)  # fmt: skip
_QUOTE_SELECTORS = (
    "blockquote",
    ".gmail_quote",
    ".yahoo_quoted",
    ".moz-cite-prefix",
    "head",
    "script",
    "style",
    "title",
)
_QUOTE_FROM_HERE = ("#divRplyFwdMsg", "#appendonsend", ".OutlookMessageHeader")


def html_to_text(html: str) -> str:
    """Visible text of an HTML body without its quoted parts, one line per block or ``<br>``."""
    soup = BeautifulSoup(html, "html.parser")
    for selector in _QUOTE_FROM_HERE:
        start = soup.select_one(selector)
        if start is not None:
            _drop_from(start)
    for selector in _QUOTE_SELECTORS:
        for element in soup.select(selector):
            element.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for block in soup.find_all(list(_BLOCK_TAGS)):
        block.insert_before("\n")
        block.insert_after("\n")
    return soup.get_text().replace("\xa0", " ")


def _drop_from(start: Tag) -> None:
    """Remove ``start``, everything after it in document order, and a rule just before it."""
    previous = start.find_previous_sibling()
    if isinstance(previous, Tag) and previous.name == "hr":
        previous.decompose()
    node: Tag | None = start
    while node is not None and node.name != "[document]":
        for sibling in list(node.next_siblings):
            sibling.extract()
        parent = node.parent
        if node is start:
            node.decompose()
        node = parent


def _unquoted(line: str) -> str:
    return _QUOTE_PREFIX.sub("", line)


def _is_marker(folded: str) -> bool:
    """The tracker's marker line, whole, one of its halves, or a wrapped piece of it."""
    if any(half in folded for half in _MARKER_HALVES):
        return True
    piece = folded.strip("- ")
    return len(piece) >= _MARKER_PIECE_MIN and piece in _MARKER_FOLDED


def _is_attribution(folded: str, following: str) -> bool:
    """``On ... wrote:`` / ``Vào ... đã viết:``, on one line or wrapped over two."""
    if _ATTRIBUTION_END.search(folded):
        return bool(_ATTRIBUTION_START.match(folded)) or "@" in folded
    return (
        bool(_ATTRIBUTION_START.match(folded))
        and bool(_ATTRIBUTION_END.search(following))
        and not _ATTRIBUTION_START.match(following)
    )


def _is_header_block(folded: list[str], index: int) -> bool:
    """An Outlook ``From:`` / ``Từ:`` line followed by ``Sent:`` / ``Đã gửi:`` and the like."""
    line = folded[index]
    if not _HEADER_FROM.match(line):
        return False
    if _HEADER_SENT_INLINE.search(line):
        return True
    following = [text for text in folded[index + 1 : index + 1 + _HEADER_LOOKAHEAD] if text]
    return bool(following) and bool(_HEADER_NEXT.match(following[0]))


def _is_cut(raw: str, folded: list[str], index: int) -> bool:
    line = folded[index]
    following = folded[index + 1] if index + 1 < len(folded) else ""
    if raw.lstrip().startswith(">") or _is_marker(line):
        return True
    if raw.strip() == "--" or line in _HIDDEN_QUOTE:
        return True
    if _ORIGINAL_MESSAGE.match(line) or _SENT_FROM.match(line):
        return True
    if _UNDERSCORES.match(line):
        rest = [text for text in folded[index + 1 :] if text]
        return bool(rest) and bool(_HEADER_FROM.match(rest[0]))
    return _is_attribution(line, following) or _is_header_block(folded, index)


def cut_quoted(text: str) -> str:
    """``text`` up to the first marker, quote header, quoted line or signature separator."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ").split("\n")
    folded = [fold(_unquoted(line)) for line in lines]
    for index, raw in enumerate(lines):
        if _is_cut(raw, folded, index):
            lines = lines[:index]
            break
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def extract_reply_text(plain: str | None, html: str | None) -> str:
    """The new text of a reply: the plain part if any, else the HTML part as text, cut."""
    if plain is not None and plain.strip():
        return cut_quoted(plain)
    if html is not None and html.strip():
        return cut_quoted(html_to_text(html))
    return ""
