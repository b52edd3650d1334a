"""Finding links in rendered messages, and telling the template's own links from the data's.

Tracking turns links into signed redirects on the shop's tracking domain. It must only
do that for links the marketer wrote: a customer named `Eve https://evil.example/phish`
must not get a 180-day redirect to a phishing page signed by the shop. So a template is
rendered with every value its expressions print bracketed by two private-use
characters; a link counts as the template's own when its scheme and host (everything
up to the first `/`, `?` or `#` after `://`) are outside any bracket. A path or query
filled from the profile (`https://shop.example/cart/{{ cart_id }}`) stays tracked: it
can only lead to the shop's own host.
"""

from __future__ import annotations

import html
import re
from typing import Any

from markupsafe import Markup

TEXT_URL = re.compile(r"https?://[^\s<>\"'()\[\]{}]+", re.IGNORECASE)
HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
TRAILING = ".,;:!?"

_OPEN, _CLOSE = "\ue000", "\ue001"
_AUTHORITY_END = "/?#\\"


def mark_value(value: Any) -> Any:
    """Jinja2 `finalize`: bracket what one expression prints (markers in the value itself removed)."""
    if isinstance(value, Markup):
        return Markup(_OPEN) + Markup(str(value).replace(_OPEN, "").replace(_CLOSE, "")) + Markup(_CLOSE)
    return _OPEN + str(value).replace(_OPEN, "").replace(_CLOSE, "") + _CLOSE


def unmark(marked: str) -> tuple[str, list[bool]]:
    """The text without brackets, and for each character whether data (not the template) wrote it."""
    chars: list[str] = []
    from_data: list[bool] = []
    depth = 0
    for char in marked:
        if char == _OPEN:
            depth += 1
        elif char == _CLOSE:
            depth = max(0, depth - 1)
        else:
            chars.append(char)
            from_data.append(depth > 0)
    return "".join(chars), from_data


def _authored(text: str, from_data: list[bool], start: int, end: int) -> bool:
    """Whether the URL text[start:end] has its scheme and host written by the template."""
    separator = text.find("://", start, end)
    if separator < 0:
        return False
    stop = separator + 3
    while stop < end and text[stop] not in _AUTHORITY_END:
        stop += 1
    return not any(from_data[start:stop])


def text_links(text: str, from_data: list[bool]) -> set[str]:
    """The template's own http(s) links in plain text, as tracking will find them."""
    found = set()
    for match in TEXT_URL.finditer(text):
        url = match.group(0).rstrip(TRAILING)
        if _authored(text, from_data, match.start(), match.start() + len(url)):
            found.add(url)
    return found


def html_links(markup: str, from_data: list[bool]) -> set[str]:
    """The template's own `<a href>` targets in HTML (entities decoded, as tracking reads them)."""
    found = set()
    for match in HREF.finditer(markup):
        if _authored(markup, from_data, match.start(3), match.end(3)):
            found.add(html.unescape(match.group(3)))
    return found


def whole_link(value: str, from_data: list[bool]) -> set[str]:
    """A field that is one URL (a push target, a button): itself when the template wrote its host."""
    return {value} if _authored(value, from_data, 0, len(value)) else set()
