"""The reliability report as an aligned table, CSV or JSON.

Undefined values (CAIDI with no sustained interruption, any index of a group with no
customers) are "-" in the table, empty in CSV and null in JSON: never 0, which would
read as a perfect result, and never NaN.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from meter_gateway.gateway.reports.reliability import GroupIndices, ReliabilityReport, finite
from meter_gateway.gateway.validate import format_ts

__all__ = ["COLUMNS", "render"]

_NS = 1_000_000_000
COLUMNS = (
    "group",
    "customers_served",
    "customer_interruptions",
    "customer_minutes",
    "momentary_interruptions",
    "saifi",
    "saidi_min",
    "caidi_min",
    "maifi",
    "cemi",
)


def _row(g: GroupIndices) -> dict[str, Any]:
    return {
        "group": g.name,
        "customers_served": g.customers_served,
        "customer_interruptions": g.customer_interruptions,
        "customer_minutes": finite(g.customer_minutes),
        "momentary_interruptions": g.momentary_interruptions,
        "saifi": finite(g.saifi),
        "saidi_min": finite(g.saidi),
        "caidi_min": finite(g.caidi),
        "maifi": finite(g.maifi),
        "cemi": finite(g.cemi),
    }


def _rows(report: ReliabilityReport) -> list[dict[str, Any]]:
    return [*(_row(g) for g in report.groups), _row(report.system)]


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if v != int(v) else f"{int(v)}"
    return str(v)


def _header_text(report: ReliabilityReport) -> str:
    w = report.window
    return (
        f"Reliability {format_ts(int(w.from_s * _NS))} to {format_ts(int(w.to_s * _NS))} "
        f"by {report.by}; momentary < {report.momentary_max_s:g} s; "
        f"SAIDI and CAIDI in minutes; CEMI{report.cemi_n} = share with more than "
        f"{report.cemi_n} sustained interruptions"
    )


def _table(report: ReliabilityReport) -> str:
    header = [report.by if c == "group" else c for c in COLUMNS]
    body = [[_cell(r[c]) for c in COLUMNS] for r in _rows(report)]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]

    def line(cells: list[str]) -> str:
        # Names left, numbers right: the digits of a column line up.
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(wd) for c, wd in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    out = [_header_text(report), "", line(header), *(line(b) for b in body), ""]
    if report.cemi:
        out.append(f"CEMI{report.cemi_n}: {len(report.cemi)} customer(s)")
        for c in report.cemi:
            out.append(
                f"  {c.customer_id}  {c.sustained} sustained, {_cell(finite(c.minutes))} min  "
                f"meters {','.join(c.meter_ids)}  {report.by} {','.join(c.groups)}"
            )
    else:
        out.append(f"CEMI{report.cemi_n}: no customer with more than {report.cemi_n}")
    return "\n".join(out) + "\n"


def _csv(report: ReliabilityReport) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([report.by if c == "group" else c for c in COLUMNS])
    for r in _rows(report):
        writer.writerow(["" if r[c] is None else r[c] for c in COLUMNS])
    return buf.getvalue()


def _json(report: ReliabilityReport) -> str:
    w = report.window
    doc = {
        "from": format_ts(int(w.from_s * _NS)),
        "to": format_ts(int(w.to_s * _NS)),
        "by": report.by,
        "momentary_max_s": report.momentary_max_s,
        "units": {
            "saifi": "sustained interruptions per customer served",
            "saidi_min": "minutes of sustained interruption per customer served",
            "caidi_min": "minutes per sustained customer interruption",
            "maifi": "momentary interruptions per customer served (MAIFI, not MAIFIe)",
            "cemi": f"share of customers served with more than {report.cemi_n} sustained",
        },
        "groups": [_row(g) for g in report.groups],
        "system": _row(report.system),
        "cemi": {
            "n": report.cemi_n,
            "share": finite(report.system.cemi),
            "customers": [
                {
                    "customer_id": c.customer_id,
                    "sustained_interruptions": c.sustained,
                    "minutes": finite(c.minutes),
                    "meter_ids": list(c.meter_ids),
                    report.by + "s": list(c.groups),
                }
                for c in report.cemi
            ],
        },
        "unknown_meters": report.unknown_meters,
        "open_outages": report.open_outages,
    }
    return json.dumps(doc, indent=2) + "\n"


def render(report: ReliabilityReport, fmt: str) -> str:
    """The report in `fmt`: "table", "csv" or "json"."""
    return {"table": _table, "csv": _csv, "json": _json}[fmt](report)
