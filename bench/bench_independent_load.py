"""The consumption detectors judged on load nobody on this project wrote.

    .venv/bin/python bench/bench_independent_load.py [--households 150] [--businesses 30]
        [--days 28] [--seed 2026] [--dir DIR] [--cache DIR] [--show 40]

1. Generates the fleet's normal life from published models (`independent_load.py`:
   CREST households via richardsonpy, BDEW G0-G6 businesses via demandlib), cached;
   injects the last week's faults with their truth; writes a replay file.
2. Replays it with `--no-store` and the shipped defaults (only `data_dir` and
   `topology.file` set) through validation and the real detectors.
3. Scores households and businesses apart, per type: faults injected, raised in time
   (spike within 1 h of its start, sustained high within 6 h, sustained low and zero
   within 24 h), recall at any lag, precision, and false events per 1,000 meter-days of
   normal life (days 7-20: after the warm-up, before the faults). Every false
   consumption event is listed with the appliance that used most in its first hour (the
   model tells) and its hour of day.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import independent_load as il
import replaybench
from report import print_table

from meter_gateway.simulators.score import (
    CONSUMPTION_EVENTS,
    Expected,
    Observed,
    expected_events,
    observed_events,
    read_events,
)

# How late each type may be raised and still count as "in time", s.
IN_TIME_S = {
    "consumption_spike": 3600.0,
    "sustained_high_consumption": 6 * 3600.0,
    "sustained_low_consumption": 24 * 3600.0,
    "zero_consumption": 24 * 3600.0,
    "power_outage": 300.0,
    "comms_loss": 3600.0,
    "transformer_outage": 300.0,
}
TOLERANCE_S = 900.0


def _overlap(ex: Expected, ev: Observed) -> bool:
    return ex.start_s - TOLERANCE_S <= ev.end_s and ev.start_s - TOLERANCE_S <= ex.end_s


def evaluate(
    fleet: il.Fleet, truth: list[dict[str, Any]], lines: list[dict[str, Any]], run_end_s: float
) -> dict[str, Any]:
    """Per population and type: expected, in time, found, events, false (normal life and
    after), lateness; and the false events themselves."""
    spec = fleet.spec
    judge_from = il.START_S + spec.days * 0 + 7 * il.DAY_S
    expected = expected_events(truth, judge_from_s=judge_from, run_end_s=run_end_s)
    observed = observed_events(lines)
    detected: dict[str, float] = {}
    for ln in lines:
        if ln.get("state") == "raised":
            t = _seconds(ln.get("detected_at"))
            if t is not None:
                detected.setdefault(str(ln["event_id"]), t)
    pop = {
        m: ("households" if k == "household" else "businesses")
        for m, k in zip(fleet.meter_ids, fleet.kinds, strict=True)
    }
    tx_pop = "transformers"
    normal_lo = il.START_S + il.NORMAL[0] * il.DAY_S
    normal_hi = il.START_S + il.NORMAL[1] * il.DAY_S
    out: dict[str, Any] = {"rows": {}, "false": [], "late": [], "missed": []}
    by_key: dict[tuple[str, str], list[Observed]] = {}
    for ev in observed:
        by_key.setdefault((ev.type, ev.subject), []).append(ev)
    matched: set[str] = set()
    for ex in expected:
        p = pop.get(ex.subject, tx_pop)
        row = out["rows"].setdefault((p, ex.type), Counter())
        row["expected"] += 1
        hits = [ev for ev in by_key.get((ex.type, ex.subject), ()) if _overlap(ex, ev)]
        for ev in hits:
            matched.add(ev.event_id)
        if not hits:
            out["missed"].append((p, ex))
            continue
        row["found"] += 1
        lag = min(detected.get(ev.event_id, ev.start_s) for ev in hits) - ex.start_s
        row["lag_sum"] += max(lag, 0.0)
        if lag <= IN_TIME_S.get(ex.type, math.inf):
            row["in_time"] += 1
        else:
            out["late"].append((p, ex, lag))
    for ev in observed:
        p = pop.get(ev.subject, tx_pop)
        row = out["rows"].setdefault((p, ev.type), Counter())
        row["events"] += 1
        if ev.event_id in matched:
            continue
        if normal_lo <= ev.start_s < normal_hi:
            row["false_normal"] += 1
        else:
            row["false_other"] += 1
        out["false"].append((p, ev))
    out["meter_days"] = {
        "households": len(fleet.households) * (il.NORMAL[1] - il.NORMAL[0]),
        "businesses": len(fleet.businesses) * (il.NORMAL[1] - il.NORMAL[0]),
    }
    return out


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    import datetime as dt

    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _describe(fleet: il.Fleet, ev: Observed) -> tuple[str, str]:
    """The appliance that used most in the event's first hour (households), its hour."""
    hour = time.gmtime(ev.start_s).tm_hour
    if not ev.subject.startswith("h-"):
        return "-", f"{hour:02d}h"
    k = fleet.meter_ids.index(ev.subject)
    s = int((ev.start_s - il.START_S) // il.SLOT_S)
    window = slice(max(s, 0), max(s, 0) + 4)
    kwh = fleet.kwh[k, window]
    if kwh.size == 0:
        return "-", f"{hour:02d}h"
    top = fleet.top[k, window][int(np.argmax(kwh))]
    return il.APPLIANCES[top] if top >= 0 else "-", f"{hour:02d}h"


def print_results(fleet: il.Fleet, res: dict[str, Any], show: int) -> dict[str, float]:
    rows = []
    worst: dict[str, float] = {}
    order = sorted(res["rows"], key=lambda k: (k[0], k[1] not in CONSUMPTION_EVENTS, k[1]))
    for p, type_ in order:
        c = res["rows"][(p, type_)]
        md = res["meter_days"].get(p)
        per_k = 1000 * c["false_normal"] / md if md else None
        if type_ in CONSUMPTION_EVENTS and per_k is not None:
            worst[f"{p}/{type_}"] = per_k
        rows.append(
            [
                p,
                type_,
                str(c["expected"]),
                str(c["in_time"]),
                str(c["found"]),
                f"{100 * c['found'] / c['expected']:.0f}%" if c["expected"] else "-",
                f"{c['lag_sum'] / c['found'] / 3600:.1f} h" if c["found"] else "-",
                str(c["events"]),
                str(c["false_normal"]),
                "-" if per_k is None else f"{per_k:.2f}",
                str(c["false_other"]),
                f"{100 * (c['events'] - c['false_normal'] - c['false_other']) / c['events']:.0f}%"
                if c["events"]
                else "-",
            ]
        )
    print_table(
        [
            "population",
            "type",
            "injected",
            "in time",
            "found",
            "recall",
            "mean lag",
            "events",
            "false (normal life)",
            "per 1,000 meter-days",
            "false (fault week)",
            "precision",
        ],
        rows,
    )
    false = [(p, ev) for p, ev in res["false"] if ev.type in CONSUMPTION_EVENTS]
    if false:
        by_app = Counter()
        by_hour = Counter()
        print(f"\nfalse consumption events ({len(false)}):")
        for _p, ev in sorted(false, key=lambda x: (x[1].type, x[1].start_s))[:show]:
            app, hour = _describe(fleet, ev)
            by_app[(ev.type, app)] += 1
            by_hour[hour] += 1
            print(f"  {ev.type} {ev.subject} {il._rfc(ev.start_s)} ({hour}, top appliance: {app})")
        print(
            "  by type and appliance: "
            + ", ".join(f"{t}/{a} {n}" for (t, a), n in by_app.most_common())
        )
    if res["missed"]:
        print(f"\nmissed ({len(res['missed'])}):")
        for _p, ex in res["missed"][:show]:
            print(f"  {ex.type} {ex.subject} {il._rfc(ex.start_s)} ({ex.fault_id})")
    if res["late"]:
        print(f"\nfound, but late ({len(res['late'])}):")
        for _p, ex, lag in res["late"][:show]:
            print(f"  {ex.type} {ex.subject} {il._rfc(ex.start_s)} +{lag / 3600:.1f} h")
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--households", type=int, default=150)
    ap.add_argument("--businesses", type=int, default=30)
    ap.add_argument("--days", type=int, default=28, help="at least 22 (7 warm-up, 14 normal)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--dir", type=Path, help="keep the replay file and events here")
    ap.add_argument("--cache", type=Path, default=il.DEFAULT_CACHE)
    ap.add_argument("--show", type=int, default=40, help="false/missed events to list")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an events: setting other than the shipped default (e.g. spike_factor=1.8)",
    )
    args = ap.parse_args(argv)
    if args.days < 22:
        ap.error("--days must be at least 22: a week of warm-up, two of normal life, faults")
    spec = il.FleetSpec(args.households, args.businesses, args.days, args.seed)
    events: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: write KEY=VALUE, e.g. spike_factor=1.8")
        events[key.strip()] = yaml.safe_load(value)
    print(
        f"bench_independent_load: {spec.households} households (CREST / richardsonpy), "
        f"{spec.businesses} businesses (BDEW / demandlib), {spec.days} days at 15 min, "
        f"seed {spec.seed}" + (f"; events: {events}" if events else "; shipped defaults")
    )
    print("\n".join(common.environment(["richardsonpy", "demandlib"], detectors=True)))
    t0 = time.perf_counter()
    fleet = il.generate(spec, args.cache)
    gen_s = time.perf_counter() - t0
    inj = il.inject(fleet)
    with replaybench.folder(args.dir, "independent-load-") as where:
        path = il.write_replay(fleet, inj, where)
        t1 = time.perf_counter()
        summary, _ = replaybench.replay(
            path, where, store=False, events=events, progress_every_s=30.0
        )
        wall = time.perf_counter() - t1
        lines = read_events(where / "events-nostore.jsonl")
    run_end = il.START_S + spec.days * il.DAY_S
    res = evaluate(fleet, inj.truth, lines, run_end)
    print(
        f"fleet {gen_s:.1f} s (cached when fast); replay: {summary.readings:,} readings in "
        f"{wall:.1f} s ({summary.readings / wall:,.0f} readings/s)"
    )
    worst = print_results(fleet, res, args.show)
    over = {k: v for k, v in worst.items() if v > 1.0}
    print(
        "\ntarget (at most 1 false event per 1,000 meter-days per type and population): "
        + ("met" if not over else "missed: " + ", ".join(f"{k} {v:.2f}" for k, v in over.items()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
