"""What the gateway shows of itself over HTTP: /metrics, /healthz, /readyz, /status and
the status page `/`.

`snapshot` builds the state (/status), `wording` says it as text (the page's view),
`page` renders that into HTML, `metrics` is the Prometheus exposition and `server` the
aiohttp app. All of it reads the gateway through `view.GatewayView`, never the
gateway's class: the gateway makes the server.
"""

from meter_gateway.gateway.status.metrics import GatewayCollector
from meter_gateway.gateway.status.page import render_page
from meter_gateway.gateway.status.server import StatusServer
from meter_gateway.gateway.status.snapshot import StatusSnapshot, status_snapshot
from meter_gateway.gateway.status.view import GatewayView
from meter_gateway.gateway.status.wording import PageView, page_view

__all__ = [
    "GatewayCollector",
    "GatewayView",
    "PageView",
    "StatusServer",
    "StatusSnapshot",
    "page_view",
    "render_page",
    "status_snapshot",
]
