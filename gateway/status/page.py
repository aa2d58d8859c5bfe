"""The status page `/`: static HTML rendered on the server (it reads without JavaScript)
plus a small inline script that fetches `/status?view=page` every few seconds and
redraws it in place: no reload, no CDN, every value set as text (never as HTML).
Both draw `wording.page_view`.

The page's frame, style and script are files of this package (`status.html`,
`status.css`, `status.js`), read once at import. The style and the script are inlined
and allowed by their hashes in the page's Content-Security-Policy (`CSP`), computed here
from the very text inlined.

With `http.token` set the page needs the token too. A browser cannot send an
`Authorization` header when it opens a page, so `/` (and only `/`) also takes it as
`?token=...`: the script keeps it in the tab's sessionStorage, takes it out of the
address bar and sends it as `Authorization: Bearer` on every `/status` fetch. Without
it, `/` answers 401 with the empty page and a form that asks for the token (kept the
same way). The page sends no `Referer`.
"""

from __future__ import annotations

import base64
import hashlib
import html
from importlib.resources import files
from string import Template

from meter_gateway.gateway.status.snapshot import StatusSnapshot
from meter_gateway.gateway.status.wording import PageView, Section, page_view

__all__ = ["CSP", "REFRESH_S", "render_page"]

REFRESH_S = 3  # the page fetches /status this often

_FILES = files("meter_gateway.gateway.status")


def _read(name: str) -> str:
    return (_FILES / name).read_text(encoding="utf-8")


_STYLE = _read("status.css")
_SCRIPT = _read("status.js").replace("@REFRESH_MS@", str(REFRESH_S * 1000))
# `$name` placeholders (string.Template): `$$` for a dollar sign in the page's text.
_FRAME = Template(_read("status.html"))


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only this page's own script and style run; it talks to nothing but its own server.
CSP = (
    f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _render_banner(v: PageView) -> str:
    cls = "bad" if not v["ready"] else "warn" if v["attention"] else "ok"
    out = f'<div id="banner" class="banner {cls}"><p id="ready" class="state">'
    out += f"{_e(v['ready_text'])}</p>"
    if v["reasons"]:
        out += "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in v["reasons"]) + "</ul>"
    if v["attention"]:
        items = "".join(f"<li>{_e(x)}</li>" for x in v["attention"])
        out += (
            f'<div id="attention" class="attention"><h2>Needs attention</h2><ul>{items}</ul></div>'
        )
    return out + "</div>"


def _render_section(sec: Section) -> str:
    head = sec["head"]
    out = f'<section id="sec-{_e(sec["id"])}"><h2>{_e(sec["title"])}</h2><table>'
    if head:
        out += "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>"
    out += "<tbody>"
    for row in sec["rows"]:
        cls = f' class="{_e(row["cls"])}"' if row["cls"] else ""
        cells = "".join(
            f"<th>{_e(c)}</th>" if not head and i == 0 else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row["cells"])
        )
        out += f"<tr{cls}>{cells}</tr>"
    out += "</tbody></table>"
    if sec["note"]:
        out += f'<p class="note">{_e(sec["note"])}</p>'
    return out + "</section>"


def render_page(s: StatusSnapshot | None) -> str:
    """The status page: `s` (a `status_snapshot`) drawn on the server, and the script
    that keeps it up to date. `None`: the page without data, asking for the token."""
    if s is None:
        title = "meter-gateway"
        body = (
            '<div id="banner" class="banner warn"><p id="ready" class="state">'
            "Sign in</p><ul><li>This gateway's status needs its access token "
            "(http.token).</li></ul></div>"
        )
        updated = ""
    else:
        v = page_view(s)
        title = v["title"]
        body = _render_banner(v) + "".join(_render_section(sec) for sec in v["sections"])
        updated = v["updated"]
    return _FRAME.substitute(
        title=_e(title),
        style=_STYLE,
        loaded=0 if s is None else 1,
        updated=_e(updated),
        hidden="" if s is None else " hidden",
        body=body,
        refresh_s=REFRESH_S,
        script=_SCRIPT,
    )
