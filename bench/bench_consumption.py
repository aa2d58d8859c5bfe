"""The consumption detectors on four simulated weeks: precision, recall, false-event rate.

    .venv/bin/python bench/bench_consumption.py [--scenario simulators/scenarios/four_weeks.yaml]
                                                [--dir DIR] [--reuse] [--meters N] [--weeks W]
                                                [--tolerance 900] [--show 8]

1. Writes the scenario's traffic to a replay file (`write_replay_file`; the four-week
   scenario: 2,000 meters, 15-minute readings, 28 days, about 5.4 M readings, with
   real-life load variation and holidays), with its ground-truth log and topology CSV.
   The meter models dominate: about 5-6 min of one core for the full scenario (about
   16,000 readings/s with load variation; the replay about 1.5 min). `--reuse` keeps the
   file already in `--dir`;
   `--meters` (multiple of 50, at least 500) and `--weeks` (at least 2) make a smaller run:
   transformer faults outside the smaller fleet are dropped, and the consumption faults
   move with the last week.
2. Replays it with `--no-store` through the gateway's validation and detectors (the real
   `Engine`), events to `events-nostore.jsonl`; readings/s is the replay's own rate.
3. Scores the events against the truth log (`simulators.score`), consumption faults only
   after the baselines' warm-up (`events.baseline_warmup_days`): per type precision and
   recall, the consumption types first. Normal life is every week but the last (no
   consumption fault is injected there): each consumption event raised then is a false
   one, given per 1,000 meter-days of normal life, with a few of them listed (meter,
   profile, time, whether the day was a holiday).

The data is in a temporary folder unless `--dir` names one (then it is kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.meter import rfc3339
from meter_gateway.simulators.scenario import Scenario, load_scenario
from meter_gateway.simulators.score import (
    CONSUMPTION_EVENTS,
    EXPECTED_EVENTS,
    Observed,
    Score,
    observed_events,
    read_events,
    score,
)
from meter_gateway.simulators.truth import read_truth

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import replaybench
from report import print_table

ROOT = Path(__file__).resolve().parents[1]
DAY_S = 86_400
WEEK_S = 7 * DAY_S
# The fault types the consumption detectors are scored on.
CONSUMPTION_FAULTS = {f for f, e in EXPECTED_EVENTS.items() if e in CONSUMPTION_EVENTS}


def scaled(scenario: Scenario, meters: int | None, weeks: int | None) -> Scenario:
    """The scenario on fewer meters or weeks: transformer / feeder faults outside the fleet
    dropped, concentrators capped, the consumption faults moved along with the last week."""
    fleet = scenario.fleet
    faults = list(scenario.faults)
    update: dict[str, Any] = {}
    if meters is not None:
        transformers = -(-meters // fleet.meters_per_transformer)
        feeders = -(-transformers // fleet.transformers_per_feeder)
        faults = [
            f
            for f in faults
            if (f.transformer is None or int(f.transformer.split("-")[1]) <= transformers)
            and (f.feeder is None or int(f.feeder.split("-")[1]) <= feeders)
        ]
        update["meters"] = meters
        update["concentrators"] = min(fleet.concentrators, transformers)
    if weeks is not None:
        if fleet.duration is None:
            sys.exit("bench_consumption: --weeks needs a scenario with a duration")
        shift = weeks * WEEK_S - fleet.duration
        update["duration"] = weeks * WEEK_S
        moved = []
        for f in faults:
            if f.type in CONSUMPTION_FAULTS and f.rate_per_day is not None:
                changes = {
                    k: getattr(f, k) + shift
                    for k in ("rate_from", "rate_until")
                    if isinstance(getattr(f, k), float)
                }
                f = f.model_copy(update=changes)
            moved.append(f)
        faults = moved
    return scenario.model_copy(update={"fleet": fleet.model_copy(update=update), "faults": faults})


def _holidays(truth: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(r["start_s"], r["end_s"] or float("inf")) for r in truth if r["type"] == "holiday"]


def _describe(ev: Observed, fleet: Fleet, holidays: list[tuple[float, float]]) -> str:
    site = fleet.topology.sites.get(ev.subject)
    kind = (
        f"{site.profile}{', PV' if site.prosumer else ''}{', dc' if site.concentrator_id else ''}"
        if site is not None
        else "?"
    )
    end = "open" if ev.end_s == float("inf") else rfc3339(ev.end_s)
    day = time.strftime("%a", time.gmtime(ev.start_s))
    holiday = any(a <= ev.start_s < b for a, b in holidays)
    return (
        f"{ev.type} {ev.subject} ({kind}) {rfc3339(ev.start_s)} {day}"
        f"{' (holiday)' if holiday else ''} .. {end}"
    )


def print_score(s: Score, show: int) -> None:
    rows = s.rows()
    cons = [r for r in rows if r[0] in CONSUMPTION_EVENTS]
    other = [r for r in rows if r[0] not in CONSUMPTION_EVENTS and (r[1] != "0" or r[4] != "0")]
    print("consumption (faults after the warm-up):")
    print_table(Score.HEADER, cons)
    if other:
        print("\nthe other detectors, on the same traffic:")
        print_table(Score.HEADER, other)
    if s.unscored:
        print(
            "\nevents of types no injected fault maps to (not scored): "
            + ", ".join(f"{k} {n}" for k, n in sorted(s.unscored.items()))
        )
    if show:
        missed = [x for x in s.missed if x.type in CONSUMPTION_EVENTS]
        for x in missed[:show]:
            end = "open" if x.end_s == float("inf") else rfc3339(x.end_s)
            print(f"  missed: {x.type} {x.subject} {rfc3339(x.start_s)} .. {end} ({x.fault_id})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--scenario", type=Path, default=ROOT / "simulators" / "scenarios" / "four_weeks.yaml"
    )
    ap.add_argument("--dir", type=Path, help="keep the files here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="reuse the replay file in --dir")
    ap.add_argument("--meters", type=int, help="fewer meters (transformer faults beyond dropped)")
    ap.add_argument("--weeks", type=int, help="fewer weeks (at least 2; faults in the last)")
    ap.add_argument("--tolerance", type=float, default=900.0, help="seconds (default 900)")
    ap.add_argument("--show", type=int, default=8, help="missed/false examples to list")
    args = ap.parse_args()
    if args.weeks is not None and args.weeks < 2:
        ap.error("--weeks: at least 2 (a week of warm-up, a week of faults)")

    print("\n".join(common.environment(detectors=True)))
    scenario = scaled(load_scenario(args.scenario), args.meters, args.weeks)
    with replaybench.folder(args.dir, "bench-consumption-") as folder:
        fleet = Fleet(scenario)
        path, gen_s = replaybench.generate(fleet, folder, args.reuse, progress_every_s=30.0)
        if fleet.end is None:
            sys.exit("bench_consumption: the scenario needs a duration")
        meters = len(fleet.meters)
        days = (fleet.end - fleet.start) / DAY_S
        nostore, config = replaybench.replay(path, folder, store=False, progress_every_s=30.0)
        print(nostore.text(), file=sys.stderr)
        warmup_s = config.events.baseline_warmup_days * DAY_S
        judge_from = fleet.start + warmup_s
        fault_week = fleet.end - WEEK_S  # normal life before it
        truth = read_truth(path.with_name("traffic.truth.jsonl"))
        events = read_events(folder / "events-nostore.jsonl")
        s = score(
            truth,
            events,
            meters=meters,
            days=days,
            tolerance_s=args.tolerance,
            prosumers={m for m, site in fleet.topology.sites.items() if site.prosumer},
            no_will={m for m, site in fleet.topology.sites.items() if site.concentrator_id},
            judge_from_s=judge_from,
            run_end_s=fleet.end,
        )
        early = [f for f in truth if f["type"] in CONSUMPTION_FAULTS and f["start_s"] < fault_week]
        normal = sorted(
            (
                ev
                for ev in observed_events(events)
                if ev.type in CONSUMPTION_EVENTS and ev.start_s < fault_week
            ),
            key=lambda ev: ev.start_s,
        )

        print(
            f"\n{args.scenario.name}: {meters:,} meters, {days:g} days from "
            f"{rfc3339(fleet.start)}, warm-up {warmup_s / DAY_S:g} d, faults from "
            f"{rfc3339(fault_week)}, tolerance {args.tolerance:g} s\n"
        )
        print_score(s, args.show)

        normal_days = (fault_week - fleet.start) / DAY_S
        judged_days = (fault_week - judge_from) / DAY_S
        print(
            f"\nnormal life ({normal_days:g} days before the fault week"
            + (f"; {len(early)} consumption faults injected there!" if early else "")
            + f"): {len(normal)} consumption events = "
            f"{1000 * len(normal) / (meters * normal_days):.2f} per 1,000 meter-days "
            f"({1000 * len(normal) / (meters * judged_days):.2f} per 1,000 judged meter-days, "
            f"after the warm-up)"
            if normal_days > 0 and judged_days > 0
            else "\nno normal life before the fault week"
        )
        by_type = Counter(ev.type for ev in normal)
        if by_type:
            print("  by type: " + ", ".join(f"{k} {n}" for k, n in sorted(by_type.items())))
        holidays = _holidays(truth)
        for ev in normal[: args.show]:
            print("  false (normal life): " + _describe(ev, fleet, holidays))
        in_week = [
            ev for ev in s.false if ev.type in CONSUMPTION_EVENTS and ev.start_s >= fault_week
        ]
        for ev in in_week[: args.show]:
            print("  false (fault week): " + _describe(ev, fleet, holidays))

        print()
        rows = [
            [
                "generate replay file",
                f"{gen_s:.1f} s" if gen_s is not None else "(reused)",
                f"{nostore.readings / gen_s:,.0f}" if gen_s else "-",
            ],
            ["replay --no-store", f"{nostore.elapsed_s:.1f} s", f"{nostore.rate:,.0f}"],
        ]
        print_table(["step", "wall time", "readings/s"], rows)
        print(
            f"\n{nostore.readings:,} readings, {nostore.lines:,} lines, "
            f"{sum(nostore.rejected.values()):,} rejected"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
