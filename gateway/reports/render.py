"""The reports as an aligned table, CSV or JSON (reliability, billing, customer tags).

Undefined values (CAIDI with no sustained interruption, any index of a group with no
customers) are "-" in the table, empty in CSV and null in JSON: never 0, which would
read as a perfect result, and never NaN.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from meter_gateway.gateway.reports.billing import FLAGS as BILLING_FLAGS
from meter_gateway.gateway.reports.billing import BillingReport, BoundaryValue
from meter_gateway.gateway.reports.customers import CustomerTags
from meter_gateway.gateway.reports.reliability import GroupIndices, ReliabilityReport, finite
from meter_gateway.gateway.validate import format_ts

__all__ = [
    "BILLING_COLUMNS",
    "COLUMNS",
    "CUSTOMER_COLUMNS",
    "render",
    "render_billing",
    "render_customers",
]

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


# A spreadsheet takes a cell starting with one of these as a formula (OWASP's CSV
# injection): topology-sourced text (customer, meter, feeder ids) must not run as one.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """`value` as a CSV cell that no spreadsheet runs: text starting like a formula gets
    a leading `'` (a number, negative ones included, stays a number)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


class _Writer:
    """csv.writer with every cell passed through `csv_cell`."""

    def __init__(self, buf: io.StringIO) -> None:
        self._w = csv.writer(buf, lineterminator="\n")

    def writerow(self, row: Sequence[Any]) -> None:
        self._w.writerow([csv_cell(v) for v in row])


def _csv(report: ReliabilityReport) -> str:
    buf = io.StringIO()
    writer = _Writer(buf)
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


# -- shared by the billing and customers outputs ---------------------------------------------


def _aligned(header: list[str], body: list[list[str]], numeric: set[int]) -> list[str]:
    """Rows as aligned text: numbers right, text left; the last column is not padded."""
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]

    def line(cells: list[str]) -> str:
        out = []
        for i, (c, w) in enumerate(zip(cells, widths, strict=True)):
            out.append(c.rjust(w) if i in numeric else c.ljust(w))
        return "  ".join(out).rstrip()

    return [line(header), *(line(b) for b in body)]


def _kwh(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _kwh_text(v: float | None, empty: str) -> str:
    return empty if v is None else f"{v:.3f}"


# -- billing ---------------------------------------------------------------------------------

BILLING_COLUMNS = (
    "customer_id",
    "meters",
    "import_kwh",
    "export_kwh",
    "from_import_kwh",
    "to_import_kwh",
    "flags",
)


def _bill_rows(report: BillingReport, detail: bool) -> list[tuple[str, dict[str, Any]]]:
    """("customer" | "meter", row) pairs; meter rows follow their customer when `detail`."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for c in report.customers:
        rows.append(
            (
                "customer",
                {
                    "customer_id": c.customer_id,
                    "meter_id": "",
                    "meters": ",".join(c.meter_ids),
                    "import_kwh": c.import_kwh,
                    "export_kwh": c.export_kwh,
                    "from_import_kwh": c.from_import_kwh,
                    "to_import_kwh": c.to_import_kwh,
                    "flags": list(c.flags),
                },
            )
        )
        if detail:
            for m in c.meters:
                rows.append(
                    (
                        "meter",
                        {
                            "customer_id": c.customer_id,
                            "meter_id": m.meter_id,
                            "meters": m.meter_id,
                            "import_kwh": m.import_kwh,
                            "export_kwh": m.export_kwh,
                            "from_import_kwh": m.start.import_kwh,
                            "to_import_kwh": m.end.import_kwh,
                            "flags": list(m.flags),
                        },
                    )
                )
    return rows


def _local(t_ns: int, zone: str) -> str:
    t = datetime.fromtimestamp(t_ns // _NS, UTC).astimezone(ZoneInfo(zone))
    return t.isoformat(sep=" ")


def _bill_heading(report: BillingReport) -> str:
    return (
        f"Billing {format_ts(report.from_ns)} to {format_ts(report.to_ns)} "
        f"({_local(report.from_ns, report.timezone)} to {_local(report.to_ns, report.timezone)} "
        f"{report.timezone}, the end exclusive); kWh from the registers "
        "at the boundaries; flags: estimated, suspect, open, started, no data, "
        "register decrease, not in topology (see --help)"
    )


def _bill_table(report: BillingReport, detail: bool) -> str:
    cols = list(BILLING_COLUMNS)
    if detail:
        cols.insert(1, "meter_id")
    body = []
    for kind, r in _bill_rows(report, detail):
        cells = []
        for col in cols:
            v = r[col]
            if col == "flags":
                cells.append(", ".join(v) if v else "-")
            elif col == "meter_id":
                cells.append(v if kind == "meter" else "total")
            elif col.endswith("_kwh"):
                cells.append(_kwh_text(v, "-"))
            else:
                cells.append(str(v))
        body.append(cells)
    numeric = {i for i, c in enumerate(cols) if c.endswith("_kwh")}
    out = [_bill_heading(report), "", *_aligned(cols, body, numeric)]
    if not report.customers:
        out.append("(no customer)")
    return "\n".join(out) + "\n"


def _bill_csv(report: BillingReport, detail: bool) -> str:
    cols = list(BILLING_COLUMNS)
    if detail:
        cols.insert(1, "meter_id")
    buf = io.StringIO()
    writer = _Writer(buf)
    writer.writerow(cols)
    for _kind, r in _bill_rows(report, detail):
        writer.writerow(
            [
                ";".join(r[c])
                if c == "flags"
                else _kwh_text(r[c], "")
                if c.endswith("_kwh")
                else r[c]
                for c in cols
            ]
        )
    return buf.getvalue()


def _boundary_json(b: BoundaryValue) -> dict[str, Any]:
    return {
        "time": format_ts(b.at_ns),
        "import_kwh": _kwh(b.import_kwh),
        "export_kwh": _kwh(b.export_kwh),
        "how": b.how,
        "flags": [f for f in BILLING_FLAGS if f in b.flags],
        "points": [
            {
                "time": format_ts(p.time_ns),
                "import_kwh": p.import_kwh,
                "export_kwh": p.export_kwh,
                "quality": p.quality,
                "estimation_method": p.estimation_method or None,
            }
            for p in b.points
        ],
    }


def _bill_json(report: BillingReport, detail: bool) -> str:
    del detail  # JSON always has the meters
    doc = {
        "from": format_ts(report.from_ns),
        "to": format_ts(report.to_ns),
        "timezone": report.timezone,
        "units": "kWh",
        "customers": [
            {
                "customer_id": c.customer_id,
                "meter_ids": c.meter_ids,
                "import_kwh": _kwh(c.import_kwh),
                "export_kwh": _kwh(c.export_kwh),
                "from_import_kwh": _kwh(c.from_import_kwh),
                "to_import_kwh": _kwh(c.to_import_kwh),
                "flags": list(c.flags),
                "meters": [
                    {
                        "meter_id": m.meter_id,
                        "import_kwh": _kwh(m.import_kwh),
                        "export_kwh": _kwh(m.export_kwh),
                        "from_import_kwh": _kwh(m.start.import_kwh),
                        "to_import_kwh": _kwh(m.end.import_kwh),
                        "from_export_kwh": _kwh(m.start.export_kwh),
                        "to_export_kwh": _kwh(m.end.export_kwh),
                        "flags": list(m.flags),
                        "from": _boundary_json(m.start),
                        "to": _boundary_json(m.end),
                    }
                    for m in c.meters
                ],
            }
            for c in report.customers
        ],
        "unknown_meters": report.unknown_meters,
    }
    return json.dumps(doc, indent=2) + "\n"


def render_billing(report: BillingReport, fmt: str, *, detail: bool = False) -> str:
    """The billing report in `fmt`; `detail`: per meter rows in the table and CSV too."""
    return {"table": _bill_table, "csv": _bill_csv, "json": _bill_json}[fmt](report, detail)


# -- customer tags ---------------------------------------------------------------------------

CUSTOMER_COLUMNS = ("customer_id", "meters", "tags", "evidence")


def _tags_heading(tags: CustomerTags, timezone: str) -> str:
    th = tags.thresholds
    w = tags.window
    return (
        f"Customer tags {format_ts(int(w.from_s * _NS))} to {format_ts(int(w.to_s * _NS))} "
        f"({timezone}); high_standby >= {th.high_standby_kw:g} kW, night_heavy >= "
        f"{th.night_heavy_share:g}, peak_contributor top {th.peak_top_share:g} "
        f"({tags.peak_cut} customer(s)), outage_sensitive > {th.outage_sensitive_min} "
        f"sustained, prosumer >= {th.prosumer_min_export_kwh:g} kWh exported"
    )


def _tags_table(tags: CustomerTags, tag: str | None, timezone: str) -> str:
    body = [
        [
            c.customer_id,
            ",".join(c.meter_ids),
            ",".join(c.tags),
            "; ".join(f"{t}: {e}" for t, e in c.tags.items()),
        ]
        for c in tags.tagged(tag)
    ]
    out = [_tags_heading(tags, timezone), "", *_aligned(list(CUSTOMER_COLUMNS), body, set())]
    if not body:
        out.append(f"(no customer tagged{' ' + tag if tag else ''})")
    return "\n".join(out) + "\n"


def _tags_csv(tags: CustomerTags, tag: str | None, timezone: str) -> str:
    del timezone
    buf = io.StringIO()
    writer = _Writer(buf)
    writer.writerow(CUSTOMER_COLUMNS)
    for c in tags.tagged(tag):
        writer.writerow(
            [
                c.customer_id,
                ",".join(c.meter_ids),
                ";".join(c.tags),
                " | ".join(f"{t}: {e}" for t, e in c.tags.items()),
            ]
        )
    return buf.getvalue()


def _tags_json(tags: CustomerTags, tag: str | None, timezone: str) -> str:
    th = tags.thresholds
    w = tags.window
    shown = [c for c in tags.customers if tag is None or tag in c.tags]
    doc = {
        "from": format_ts(int(w.from_s * _NS)),
        "to": format_ts(int(w.to_s * _NS)),
        "timezone": timezone,
        "thresholds": {
            "high_standby_kw": th.high_standby_kw,
            "night_heavy_share": th.night_heavy_share,
            "peak_top_share": th.peak_top_share,
            "peak_cut": tags.peak_cut,
            "outage_sensitive_min": th.outage_sensitive_min,
            "momentary_max_s": tags.momentary_max_s,
            "prosumer_min_export_kwh": th.prosumer_min_export_kwh,
        },
        "customers": [
            {
                "customer_id": c.customer_id,
                "meters": list(c.meter_ids),
                "tags": dict(c.tags),
                "figures": c.figures(),
            }
            for c in shown
        ],
        "by_base_load": [
            {"customer_id": c.customer_id, "mean_base_load_kw": finite(c.mean_base_load_kw)}
            for c in tags.by_base_load
        ],
        "outage_sensitive": [c.customer_id for c in tags.outage_sensitive],
        "unknown_meters": tags.unknown_meters,
    }
    return json.dumps(doc, indent=2) + "\n"


def render_customers(
    tags: CustomerTags, fmt: str, *, tag: str | None = None, timezone: str = "UTC"
) -> str:
    """The tagged customers in `fmt` (JSON: every customer, with figures); `tag` filters."""
    return {"table": _tags_table, "csv": _tags_csv, "json": _tags_json}[fmt](tags, tag, timezone)
