"""Jinja2 rendering of the digest, alert and acknowledgement mails (vi and en).

HTML templates (``*.html.j2``) are autoescaped; every printed value is first flattened to one
line (control characters become spaces), so report text can neither break the HTML nor forge
lines such as the reply marker in the text part.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from mailtracker.domain.digest import DigestModel, digest_subject
from mailtracker.domain.notices import AckModel, AlertModel, ack_subject, alert_subject
from mailtracker.parsing.reply import MARKER


@dataclass(frozen=True, slots=True)
class RenderedMail:
    """A rendered message: subject, text part and (optional) HTML part."""

    subject: str
    text: str
    html: str | None


def _one_line(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and not isinstance(value, Markup):
        return "".join(
            " " if unicodedata.category(ch) in {"Cc", "Zl", "Zp"} else ch for ch in value
        )
    return value


def format_when(value: dt.date | dt.datetime | None) -> str:
    """``14/02/2020`` for a date, ``14/02/2020 07:00`` for a datetime, ``—`` for none."""
    if value is None:
        return "—"
    if isinstance(value, dt.datetime):
        return value.strftime("%d/%m/%Y %H:%M")
    return value.strftime("%d/%m/%Y")


def format_temperature(value: float | None, language: str) -> str:
    """``36,8`` in Vietnamese, ``36.8`` in English; empty for none."""
    if value is None:
        return ""
    text = f"{value:.1f}"
    return text.replace(".", ",") if language == "vi" else text


@cache
def environment() -> Environment:
    """The shared environment: package templates, strict undefined, HTML autoescape."""
    env = Environment(
        loader=PackageLoader("mailtracker", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_one_line,
    )
    env.filters["when"] = format_when
    env.filters["temperature"] = format_temperature
    env.globals["marker"] = MARKER
    return env


def render(template: str, **context: Any) -> str:
    """Render one template of ``mailtracker/templates`` with ``context``."""
    return environment().get_template(template).render(**context)


def render_digest(model: DigestModel, *, prefix: str) -> RenderedMail:
    """A unit's digest in its language, text and HTML."""
    context = {"model": model, "prefix": prefix}
    return RenderedMail(
        subject=digest_subject(model, prefix),
        text=render(f"digest.{model.language}.txt.j2", **context),
        html=render(f"digest.{model.language}.html.j2", **context),
    )


def render_alert(model: AlertModel, *, prefix: str) -> RenderedMail:
    """An urgent alert about one case, text and HTML."""
    context = {"model": model, "prefix": prefix}
    return RenderedMail(
        subject=alert_subject(model),
        text=render(f"alert.{model.language}.txt.j2", **context),
        html=render(f"alert.{model.language}.html.j2", **context),
    )


def render_ack(model: AckModel, *, prefix: str) -> RenderedMail:
    """The acknowledgement of a reply, plain text."""
    return RenderedMail(
        subject=ack_subject(model, prefix),
        text=render(f"ack.{model.language}.txt.j2", model=model, prefix=prefix),
        html=None,
    )
