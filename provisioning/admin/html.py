"""HTML for the console: every value escaped unless it is already `Markup`; one page layout.

Templates are literals in our code; whatever is put into them (device names, labels,
errors) goes through `html()`, which escapes it. Nothing here runs script: the pages
work without JavaScript and the Content-Security-Policy forbids it.
"""

from __future__ import annotations

import html as _html
from collections.abc import Iterable
from datetime import UTC, datetime


class Markup(str):
    """Text that is already HTML: inserted as it is."""

    __slots__ = ()


def esc(value: object) -> Markup:
    """`value` as HTML text: `&<>"'` escaped (Markup passes through)."""
    if isinstance(value, Markup):
        return value
    return Markup(_html.escape("" if value is None else str(value), quote=True))


def html(template: str, *args: object, **kwargs: object) -> Markup:
    """`template.format(...)` with every argument escaped."""
    return Markup(
        template.format(*(esc(a) for a in args), **{k: esc(v) for k, v in kwargs.items()})
    )


def join(parts: Iterable[Markup]) -> Markup:
    """Pieces of markup, one after another."""
    return Markup("".join(esc(p) for p in parts))


def when(epoch_s: float | None) -> str:
    """`2026-11-22 20:10 UTC`, or `-`."""
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration(ms: int | None) -> str:
    """`1:05` (minutes:seconds), `1:02:03` past an hour, `-` when unknown."""
    if ms is None:
        return "-"
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def table(headers: Iterable[str], rows: Iterable[Iterable[object]], *, empty: str) -> Markup:
    """A table whose cells are labelled, so a phone shows each row as a card."""
    heads = list(headers)
    body = [
        html(
            "<tr>{}</tr>",
            join(
                html('<td data-label="{}">{}</td>', h, c) for h, c in zip(heads, row, strict=True)
            ),
        )
        for row in rows
    ]
    if not body:
        return html('<p class="empty">{}</p>', empty)
    return html(
        '<div class="table"><table><thead><tr>{}</tr></thead><tbody>{}</tbody></table></div>',
        join(html("<th>{}</th>", h) for h in heads),
        join(body),
    )


_CSS = """
*{box-sizing:border-box}
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f6f6f4}
header{background:#233;color:#fff;padding:.5rem 1rem;display:flex;flex-wrap:wrap;gap:.5rem 1rem;
align-items:center}
header a{color:#fff}
header nav{display:flex;flex-wrap:wrap;gap:.3rem 1rem}
header .who{margin-left:auto;font-size:.9em}
header form{display:inline}
main{padding:1rem;max-width:72rem}
h1{font-size:1.3rem}
h2{font-size:1.1rem;margin-top:1.5rem}
a{color:#0b4f8a}
.table{overflow-x:auto}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.4rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}
td form{display:inline}
button,input,select,textarea{font:inherit;padding:.3rem .5rem}
button{cursor:pointer;border:1px solid #789;background:#fff;border-radius:4px}
button.danger{border-color:#a33;color:#a33}
.badge{display:inline-block;padding:0 .4rem;border-radius:4px;font-size:.85em;background:#ddd}
.offline,.failed{background:#f3c9c9;color:#611}
.delivered{background:#d5ecd5}
.pending{background:#fce9b0}
.secret{font:1.4rem monospace;padding:.5rem;background:#fff;border:2px dashed #789;
display:inline-block;user-select:all}
.notice{background:#e7f2e7;padding:.5rem;border-left:4px solid #3a3}
.error{background:#f7e1e1;padding:.5rem;border-left:4px solid #a33}
.empty{color:#666}
form.stack label{display:block;margin:.5rem 0}
form.filters{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:.9em}
@media (max-width:640px){
 table,tbody,tr,td{display:block;width:100%}
 thead{display:none}
 tr{margin-bottom:.6rem;border:1px solid #ddd;background:#fff}
 td{border:0;padding:.2rem .5rem}
 td::before{content:attr(data-label);display:inline-block;min-width:7rem;font-weight:600}
}
"""

NAV = (
    ("/console/devices", "Devices"),
    ("/console/calls", "Calls"),
    ("/console/groups", "Groups"),
    ("/console/enrollment-codes", "Enrollment codes"),
    ("/console/webhooks", "Webhooks"),
    ("/console/actions", "Actions"),
)


def page(title: str, body: Markup, *, header: Markup | None = None) -> str:
    """A whole page: viewport meta, inline CSS, the header (navigation, who) and `body`."""
    return html(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        "<title>{title} · kiosk fleet</title><style>{css}</style></head>"
        "<body>{header}<main><h1>{title}</h1>{body}</main></body></html>",
        title=title,
        css=Markup(_CSS),
        header=header or Markup(""),
        body=body,
    )
