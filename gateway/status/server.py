"""The status server: /metrics, /healthz, /readyz, /status and the status page `/`.

With `http.token` set, everything but /healthz needs it as a bearer token; the page
also takes it as `?token=...` (see `page`). The server keeps no access log, so a token
in a URL is never logged, and a request it cannot parse is answered and logged without
its text (`_QuietRequestHandler`).

Readiness (`/readyz`) is about taking MQTT input and storing it: a Modbus device that
is down does not make the gateway unready (restarting or bypassing it would not bring
the meter back), but the page names every failing device at the top, under "Needs
attention".
"""

from __future__ import annotations

import hmac
import logging
import time
from http import HTTPStatus
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from meter_gateway.gateway.logs import printable
from meter_gateway.gateway.status.metrics import GatewayCollector
from meter_gateway.gateway.status.page import CSP, render_page
from meter_gateway.gateway.status.snapshot import status_snapshot
from meter_gateway.gateway.status.view import GatewayView
from meter_gateway.gateway.status.wording import page_view

__all__ = ["StatusServer"]

log = logging.getLogger("meter_gateway.http")


def _bad_request_kind(exc: BaseException | None) -> str:
    """What was wrong with a request aiohttp could not parse, in words, without any of
    its text: the request line may hold a token (`/?token=...`)."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return "a request line or header longer than the server takes (8190 bytes)"
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return "not HTTP (TLS to a plain HTTP port, or another protocol)"
    if isinstance(exc, http_exceptions.InvalidURLError):
        return "an invalid URL"
    if isinstance(exc, http_exceptions.InvalidHeader):
        return "an invalid header"
    if isinstance(exc, http_exceptions.BadStatusLine):
        return "an invalid request line"
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return f"a malformed request ({type(exc).__name__})"
    return type(exc).__name__ if exc is not None else "an unknown problem"


class _QuietRequestHandler(RequestHandler):
    """aiohttp's connection handler, except for the answer to a request it cannot use.

    aiohttp logs such a request with a traceback whose message quotes the request line,
    and echoes that line in the 400 body: a request for `/?token=...&x=<9000 bytes>`
    would write the token to the log and back to whoever sent it, and every such
    request would write nine lines. Here it is one line, rate-limited by kind, naming
    the client and what was wrong, never the request's text; the body is the status's
    name. A 500 (a bug in a handler) keeps its traceback in the log, once a minute."""

    __slots__ = ()  # the same layout as aiohttp's, so an instance can take this class
    _limit: dict[tuple[int, str], list[float]] = {}

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = _bad_request_kind(exc) if status < 500 else f"{type(exc).__name__ if exc else ''}"
        now = time.monotonic()
        seen = self._limit.get((status, kind))
        if seen is None or now - seen[0] >= 60:
            more = int(seen[1]) if seen else 0
            also = f" (and {more} more like it in the last 60 s)" if more else ""
            if status >= 500:
                log.error(
                    "http: internal error answering %s %s%s",
                    request.method,
                    printable(str(request.rel_url.path), 200),
                    also,
                    exc_info=exc,
                )
            else:
                log.warning(
                    "http: refused a request from %s with %d: %s%s",
                    request.remote,
                    status,
                    kind,
                    also,
                )
            if len(self._limit) > 100:
                self._limit.clear()  # a bound on memory; at most a repeated line
            self._limit[(status, kind)] = [now, 0.0]
        else:
            seen[1] += 1
        if request.writer.output_size > 0:
            raise ConnectionError("the response was sent already; closing the connection")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        resp = web.Response(status=status, text=f"{status} {phrase}\n")
        resp.force_close()
        return resp


class _QuietServer(web.Server):
    """Makes `_QuietRequestHandler`s: the one change to aiohttp's server."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = _QuietRequestHandler
        return handler


_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class StatusServer:
    """/metrics, /healthz, /readyz, /status and the page, with `http.token` as a bearer token."""

    def __init__(self, gw: GatewayView) -> None:
        self._gw = gw
        self._token = gw.config.http.token
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(GatewayCollector(gw))
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds... (Linux)
        ProcessCollector(registry=self._registry)
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        # No access log: the page may be opened as /?token=..., which must not be logged.
        self._runner = web.AppRunner(app, access_log=None)
        self.port: int | None = None

    def _allowed(self, request: web.Request) -> bool:
        """The bearer token in the header; for the page only, also `?token=`."""
        assert self._token
        expected = self._token.encode()
        # The scheme's name is case-insensitive (RFC 7235: `bearer`, `BEARER`); the
        # token is not. Bytes: compare_digest refuses non-ASCII text, and a client may
        # send any.
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = credentials.strip(" ").encode("utf-8", "surrogateescape")
            if hmac.compare_digest(given, expected):
                return True
        if request.path == "/" and "token" in request.query:
            query = request.query["token"].encode("utf-8", "surrogateescape")
            return hmac.compare_digest(query, self._token.encode())
        return False

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._token and request.path != "/healthz" and not self._allowed(request):
            if request.path == "/":
                # The page without data: its form asks for the token.
                return self._html(render_page(None), status=401)
            return web.Response(status=401, text="401: send Authorization: Bearer <http.token>\n")
        return await handler(request)

    async def start(self) -> None:
        host, _, port = self._gw.config.http.listen.rpartition(":")
        await self._runner.setup()
        # Bad requests answered without a traceback or an echo (see _QuietRequestHandler).
        assert self._runner.server is not None
        self._runner.server.__class__ = _QuietServer
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        addresses = self._runner.addresses  # the real port when 0 was asked
        self.port = addresses[0][1] if addresses else int(port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    @staticmethod
    def _html(text: str, status: int = 200) -> web.Response:
        headers = {**_NO_STORE, "Content-Security-Policy": CSP}
        return web.Response(text=text, status=status, content_type="text/html", headers=headers)

    async def _page(self, request: web.Request) -> web.Response:
        return self._html(render_page(status_snapshot(self._gw)))

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, why = self._gw.ready()
        return web.Response(
            status=200 if ready else 503,
            text="ready\n" if ready else "not ready: " + "; ".join(why) + "\n",
        )

    async def _status(self, request: web.Request) -> web.Response:
        """The snapshot as JSON; `?view=page`: the page's view instead (what the page's
        script draws)."""
        s = status_snapshot(self._gw)
        if request.query.get("view") == "page":
            return web.json_response({"view": page_view(s)}, headers=_NO_STORE)
        return web.json_response(s, headers=_NO_STORE)
