"""The detectors on a simulated week: precision and recall per event type, and replay speed.

    .venv/bin/python bench/bench_detectors.py [--scenario simulators/scenarios/week.yaml]
                                              [--dir DIR] [--reuse] [--tolerance 900]
                                              [--victoria] [--show 5]

1. Writes the scenario's traffic to a replay file (`simulate replay-file`: 2,000 meters,
   15-minute readings, a week, about 1.3 M readings) with its ground-truth log and
   topology, timing it. `--reuse` keeps a file already in `--dir`.
2. Replays it with `--no-store` through the gateway's validation and detectors (the real
   `Engine`), events to `events.jsonl`; readings/s is the replay's own rate.
3. Scores the events against the truth log (`simulators.score`): per event type the
   faults expected and found (recall), the events and how many matched no fault
   (precision), and false events per 1,000 meter-days.
4. With `--victoria`, replays again storing into a local VictoriaMetrics (started here),
   for the rate with storage.

The data is in a temporary folder unless `--dir` names one (then it is kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meter_gateway.gateway.replay import ReplaySummary
from meter_gateway.simulators.fleet import Fleet
from meter_gateway.simulators.meter import rfc3339
from meter_gateway.simulators.scenario import load_scenario
from meter_gateway.simulators.score import Score, read_events, score
from meter_gateway.simulators.truth import read_truth

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import replaybench
from report import print_table

ROOT = Path(__file__).resolve().parents[1]
DAY_S = 86_400


def print_score(s: Score, show: int) -> None:
    print_table(Score.HEADER, s.rows())
    rate = s.false_per_1000_meter_days
    print(
        f"\nfalse events: {s.false_events} in {s.meter_days:,.0f} meter-days = "
        f"{rate:.2f} per 1,000 meter-days"
        if rate is not None
        else "\nfalse events: no meter-days"
    )
    if s.unscored:
        print(
            "events of types no injected fault maps to (not scored): "
            + ", ".join(f"{k} {n}" for k, n in sorted(s.unscored.items()))
        )
    if show:
        for what, items in (("missed", s.missed), ("false", s.false)):
            for x in items[:show]:
                end = "open" if x.end_s == float("inf") else rfc3339(x.end_s)
                print(f"  {what}: {x.type} {x.subject} {rfc3339(x.start_s)} .. {end}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--scenario", type=Path, default=ROOT / "simulators" / "scenarios" / "week.yaml"
    )
    ap.add_argument("--dir", type=Path, help="keep the files here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="reuse the replay file in --dir")
    ap.add_argument("--tolerance", type=float, default=900.0, help="seconds (default 900)")
    ap.add_argument("--victoria", action="store_true", help="also replay into VictoriaMetrics")
    ap.add_argument("--show", type=int, default=5, help="missed/false examples to list")
    args = ap.parse_args()

    # Replay speed depends on the detectors' build: compiled, or their Python sources.
    print("\n".join(common.environment(detectors=True)))
    with replaybench.folder(args.dir, "bench-detectors-") as folder:
        fleet = Fleet(load_scenario(args.scenario))
        path, gen_s = replaybench.generate(fleet, folder, args.reuse)
        meters = len(fleet.meters)
        days = (fleet.end - fleet.start) / DAY_S if fleet.end is not None else 0.0
        nostore, _ = replaybench.replay(path, folder, store=False)
        print(nostore.text(), file=sys.stderr)
        s = score(
            read_truth(path.with_name("traffic.truth.jsonl")),
            read_events(folder / "events-nostore.jsonl"),
            meters=meters,
            days=days,
            tolerance_s=args.tolerance,
            prosumers={m for m, site in fleet.topology.sites.items() if site.prosumer},
            no_will={m for m, site in fleet.topology.sites.items() if site.concentrator_id},
        )
        stored: ReplaySummary | None = None
        if args.victoria:
            from meter_gateway.simulators.services import VictoriaMetrics

            with VictoriaMetrics(folder / "victoria") as vm:
                stored, _ = replaybench.replay(path, folder, store=True, storage={"url": vm.url})
                print(stored.text(), file=sys.stderr)

        print(
            f"\n{args.scenario.name}: {meters:,} meters, {days:g} days, tolerance "
            f"{args.tolerance:g} s\n"
        )
        print_score(s, args.show)
        print()
        rows = [
            [
                "generate replay file",
                f"{gen_s:.1f} s" if gen_s is not None else "(reused)",
                f"{nostore.readings / gen_s:,.0f}" if gen_s else "-",
            ],
            ["replay --no-store", f"{nostore.elapsed_s:.1f} s", f"{nostore.rate:,.0f}"],
        ]
        if stored is not None:
            rows.append(
                ["replay into VictoriaMetrics", f"{stored.elapsed_s:.1f} s", f"{stored.rate:,.0f}"]
            )
        print_table(["step", "wall time", "readings/s"], rows)
        print(
            f"\n{nostore.readings:,} readings, {nostore.lines:,} lines, "
            f"{sum(nostore.rejected.values()):,} rejected"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
