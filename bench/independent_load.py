"""Household and business load from published models nobody on this project wrote, with
faults injected and their truth, as a replay file: the judge of the consumption detectors.

- **Households**: the CREST domestic electricity demand model (Richardson et al., 2010)
  as packaged by `richardsonpy`: a Markov chain of active occupancy per 10 minutes
  (1-5 occupants), 33 appliances switched on by occupancy and activity statistics
  (cold appliances, cooking, wet appliances, consumer electronics, electric water and
  space heating) and lighting driven by occupancy and irradiance, at 1 minute. Its pieces
  are called directly, one day at a time (its `ElectricLoad` simulates a whole year).
  Varied per household: occupants, annual use (the model's own calibration, scaled by a
  log-normal factor), single or multi-family home, which appliances it owns (the model's
  ownership rates), and more electric water and space heating than the model's British
  default (a storage water heater in 30 %, other electric space heating in 12 %, storage
  heaters in 4 %), January weather. Quiet days: 15 % of the households are away for 2-4
  days of normal life (no active occupants: cold appliances and standby only).
- **Businesses**: BDEW standard load profiles G0-G6 (`demandlib`), scaled to an annual use
  of 15-150 MWh, with a day-to-day factor (sd 6 %) and interval noise (sd 8 %): the
  published profiles are averages of many sites, smoother than one shop.
- **Faults**, in the last week only, each with its truth record: consumption spikes (a
  load 2-3 x the meter's own busiest normal interval, added for 30-45 minutes from
  up to 4 minutes into an interval, so that one metering interval holds it whole), sustained
  high (a load of 2-3 x the meter's mean, at least 1.5 kW, added for 8-36 h), sustained low
  (the register counts 20-30 % of the true use from then on: a bypass or a tampered
  meter), zero use (the register stops for 8-48 h while readings go on), power outages
  with a last gasp, comms dropouts (silence) and two transformer outages.

Both models draw from numpy's and Python's random generators; each household seeds both
from the run's seed and its number, so a fleet is the same for the same arguments.

The generated load (per meter, 15-minute kWh; per household interval the appliance that
used most) is cached as `.npz` under `--cache` (default `.cache/independent-load/`, which
git ignores): the models take about 0.05 s a household-day.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = [
    "APPLIANCES",
    "Fleet",
    "FleetSpec",
    "generate",
    "inject",
    "load_fleet",
    "write_replay",
]

DAY_S = 86_400
SLOT_S = 900
SLOTS_DAY = DAY_S // SLOT_S
# Monday 5 January 2026, 00:00 UTC: a winter month (the CREST model's January).
START_S = int(dt.datetime(2026, 1, 5, tzinfo=dt.UTC).timestamp())
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / ".cache" / "independent-load"
_BDEW = ("g0", "g1", "g2", "g3", "g4", "g5", "g6")
# More electric heating than the model's British ownership rates (row, share).
_HEATING = {"DESWH": 0.30, "Other electric space heating": 0.12, "Storage heaters": 0.04}
_OCCUPANTS = (1, 2, 3, 4, 5)
_OCCUPANT_WEIGHTS = (0.30, 0.34, 0.16, 0.13, 0.07)


def _appliance_names() -> list[str]:
    from richardsonpy.classes import appliance

    path = Path(appliance.__file__).parents[1] / "inputs" / "Appliances.csv"
    with path.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=";"))[1:]
    return [r[1] for r in rows]


APPLIANCES: list[str] = []  # filled on first use: the model's 33 appliances, then lighting


@dataclass(frozen=True, slots=True)
class FleetSpec:
    households: int = 150
    businesses: int = 30
    days: int = 28
    seed: int = 2026

    @property
    def key(self) -> str:
        return f"h{self.households}-b{self.businesses}-d{self.days}-s{self.seed}"


@dataclass(slots=True)
class Fleet:
    """Per meter, 15-minute energy in kWh (the truth of normal life, no fault yet)."""

    spec: FleetSpec
    meter_ids: list[str]
    kinds: list[str]  # "household" | "g0".."g6"
    kwh: np.ndarray  # (meters, days * 96), float64
    top: np.ndarray  # (households, days * 96) int16: index into APPLIANCES, -1 none
    away: list[tuple[str, float, float]]  # (meter_id, start_s, end_s): quiet days
    info: list[dict[str, Any]] = field(default_factory=list)

    @property
    def households(self) -> list[str]:
        return [m for m, k in zip(self.meter_ids, self.kinds, strict=True) if k == "household"]

    @property
    def businesses(self) -> list[str]:
        return [m for m, k in zip(self.meter_ids, self.kinds, strict=True) if k != "household"]


def _household(i: int, spec: FleetSpec) -> tuple[np.ndarray, np.ndarray, dict[str, Any], Any]:
    """One CREST household: 15-minute kWh, the top appliance per interval, its facts."""
    from richardsonpy.classes import appliance as app_model
    from richardsonpy.classes import lighting as light_model
    from richardsonpy.classes import occupancy as occ_model
    from richardsonpy.classes.electric_load import ElectricLoad
    from richardsonpy.classes.stochastic_el_load_wrapper import ElectricityProfile
    from richardsonpy.functions import load_radiation

    seed = spec.seed * 100_003 + i
    random.seed(seed)
    np.random.seed(seed % (2**32))
    rng = random.Random(seed ^ 0x5EED)
    n_occ = rng.choices(_OCCUPANTS, _OCCUPANT_WEIGHTS)[0]
    sfh = rng.random() < 0.5
    annual = ElectricLoad.standard_consumption["SFH" if sfh else "MFH"][n_occ]
    annual *= math.exp(rng.gauss(0.0, 0.3))
    inputs = Path(app_model.__file__).parents[1] / "inputs"
    apps = app_model.Appliances(
        str(inputs / "Appliances.csv"),
        annual_consumption=0.91 * annual,
        randomize_appliances=True,
        prev_heat_dev=False,
    )
    names = APPLIANCES[:-1]
    for name, share in _HEATING.items():
        if rng.random() < share:
            apps.data[names.index(name)][0] = 1
    lights = light_model.load_lighting_profile(
        filename=str(inputs / "LightBulbs.csv"), index=rng.randrange(100)
    )
    wrapper = ElectricityProfile(apps, lights)
    occ = occ_model.Occupancy(number_occupants=n_occ, initial_day=1, nb_days=spec.days)
    occupancy = np.array(occ.occupancy, dtype=int)
    away = None
    if rng.random() < 0.15:  # away for 2-4 days of normal life (days 8-19)
        first = rng.randrange(8, 18)
        length = rng.randint(2, 4)
        occupancy[144 * first : 144 * min(first + length, 20)] = 0
        away = (START_S + first * DAY_S, START_S + min(first + length, 20) * DAY_S)
    q_direct, q_diffuse = load_radiation.get_rad_from_try_path()
    irradiance = np.asarray(q_direct) + np.asarray(q_diffuse)  # W/m2, hourly, a year
    minutes = np.arange(1440)
    kwh = np.empty(spec.days * SLOTS_DAY)
    top = np.empty(spec.days * SLOTS_DAY, dtype=np.int16)
    for d in range(spec.days):
        weekend = (d + 1) % 7 in (0, 6)  # the model's own rule, Monday = 1
        irr = np.interp(minutes, np.arange(24) * 60, irradiance[24 * (4 + d) : 24 * (5 + d)])
        occ_day = occupancy[144 * d : 144 * (d + 1)]
        light = np.asarray(
            light_model.run_lighting_simulation(occ_day, lights, irr, wrapper.lighting_config)
        ).sum(axis=0)
        app = np.asarray(
            app_model.run_application_simulation(
                occ_day, apps, wrapper.activity_statistics[("wd", "we")[weekend]], 1
            ),
            dtype=float,
        )
        per = np.vstack([app, light[None, :]])  # (34, 1440) W
        q = per.reshape(per.shape[0], SLOTS_DAY, 15).sum(axis=2) / 60_000.0  # kWh
        kwh[d * SLOTS_DAY : (d + 1) * SLOTS_DAY] = q.sum(axis=0)
        top[d * SLOTS_DAY : (d + 1) * SLOTS_DAY] = q.argmax(axis=0)
    owned = [names[k] for k, row in enumerate(apps.data) if row[0]]
    info = {"occupants": n_occ, "sfh": sfh, "annual_kwh": round(annual), "owns": owned}
    return kwh, top, info, away


def _businesses(spec: FleetSpec, first: int) -> tuple[list[str], np.ndarray, list[dict]]:
    from demandlib import bdew

    rng = np.random.default_rng(spec.seed + 7)
    start = dt.datetime.fromtimestamp(START_S, dt.UTC).replace(tzinfo=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slp = bdew.ElecSlp(start.year).get_scaled_power_profiles(dict.fromkeys(_BDEW, 1.0))
    frame = slp.loc[start : start + dt.timedelta(days=spec.days) - dt.timedelta(minutes=15)]
    kinds, rows, info = [], [], []
    for j in range(spec.businesses):
        kind = _BDEW[j % len(_BDEW)]
        annual = float(np.exp(rng.uniform(np.log(15_000), np.log(150_000))))
        kw = frame[kind].to_numpy() * annual  # the profile's kW for 1 kWh a year, scaled
        day = np.repeat(rng.normal(1.0, 0.06, spec.days), SLOTS_DAY)
        noise = rng.normal(1.0, 0.08, kw.size).clip(0.6, 1.4)
        rows.append(kw * day * noise / 4.0)
        kinds.append(kind)
        info.append({"profile": kind, "annual_kwh": round(annual)})
    return kinds, np.array(rows), info


def generate(spec: FleetSpec, cache: Path = DEFAULT_CACHE, *, progress: bool = True) -> Fleet:
    """The fleet's normal life, from the cache when it holds this spec."""
    if not APPLIANCES:
        APPLIANCES.extend([*_appliance_names(), "Lighting"])
    path = cache / f"{spec.key}.npz"
    if path.exists():
        return load_fleet(path, spec)
    t0 = time.perf_counter()
    ids, kinds, rows, tops, infos, away = [], [], [], [], [], []
    for i in range(spec.households):
        kwh, top, info, off = _household(i, spec)
        mid = f"h-{i + 1:04d}"
        ids.append(mid)
        kinds.append("household")
        rows.append(kwh)
        tops.append(top)
        infos.append(info)
        if off:
            away.append((mid, float(off[0]), float(off[1])))
        if progress and (i + 1) % 10 == 0:
            print(
                f"  households: {i + 1}/{spec.households} ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
            )
    b_kinds, b_rows, b_info = _businesses(spec, len(ids))
    ids += [f"b-{j + 1:04d}" for j in range(spec.businesses)]
    kinds += b_kinds
    infos += b_info
    kwh = np.vstack([np.array(rows).reshape(-1, spec.days * SLOTS_DAY), b_rows])
    top = np.array(tops, dtype=np.int16).reshape(-1, spec.days * SLOTS_DAY)
    fleet = Fleet(spec, ids, kinds, kwh, top, away, infos)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        ids=np.array(ids),
        kinds=np.array(kinds),
        kwh=kwh,
        top=top,
        away=orjson.dumps(away),
        info=orjson.dumps(infos),
        appliances=np.array(APPLIANCES),
    )
    tmp.replace(path)
    if progress:
        print(f"  generated {path.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return fleet


def load_fleet(path: Path, spec: FleetSpec) -> Fleet:
    with np.load(path) as z:
        if not APPLIANCES:
            APPLIANCES.extend(str(a) for a in z["appliances"])
        return Fleet(
            spec,
            [str(x) for x in z["ids"]],
            [str(x) for x in z["kinds"]],
            z["kwh"],
            z["top"],
            [tuple(x) for x in orjson.loads(bytes(z["away"]))],
            orjson.loads(bytes(z["info"])),
        )


# -- faults ---------------------------------------------------------------------------------

FAULTS_HOUSEHOLDS = {"consumption_spike": 20, "sustained_high": 20, "sustained_low": 20}
FAULTS_HOUSEHOLDS |= {"zero_use": 15}
FAULTS_BUSINESSES = {"consumption_spike": 6, "sustained_high": 6, "sustained_low": 6}
FAULTS_BUSINESSES |= {"zero_use": 4}
OUTAGES = 60
DROPOUTS = 10
TRANSFORMERS = 5
NORMAL = (7, 21)  # days of normal life that are judged: after the warm-up, before faults


@dataclass(slots=True)
class Injected:
    """The fleet's register as the meters report it, and what the gateway receives."""

    register: np.ndarray  # (meters, slots + 1) kWh at each boundary
    silent: np.ndarray  # (meters, slots + 1) bool: no reading at that boundary
    truth: list[dict[str, Any]]
    signals: list[tuple[float, str, str]]  # (time, meter_id, last_gasp | power_restored)


def inject(fleet: Fleet) -> Injected:
    """The last week's faults, on a copy of the fleet's load, and their truth."""
    spec = fleet.spec
    rng = random.Random(spec.seed + 11)
    n_slots = spec.days * SLOTS_DAY
    kwh = fleet.kwh.copy()
    counted = np.ones_like(kwh)  # the share of the use the register counts
    silent = np.zeros((len(fleet.meter_ids), n_slots + 1), dtype=bool)
    truth: list[dict[str, Any]] = []
    signals: list[tuple[float, str, str]] = []
    last_week = (spec.days - 7) * SLOTS_DAY
    before = fleet.kwh[:, : NORMAL[1] * SLOTS_DAY]  # all of normal life, warm-up too
    busiest = before.max(axis=1) * 4  # kW of each meter's busiest normal interval
    mean_kw = before.mean(axis=1) * 4
    index = {m: k for k, m in enumerate(fleet.meter_ids)}

    def record(type_: str, meters: list[str], a: float, b: float | None, **params: Any) -> None:
        truth.append(
            {
                "fault_id": f"f-{len(truth) + 1:04d}",
                "type": type_,
                "scope": params.pop("scope", "meter"),
                "meters": meters,
                "transformer_id": params.pop("transformer_id", None),
                "feeder_id": None,
                "start_s": float(a),
                "end_s": None if b is None else float(b),
                "params": {k: v.item() if hasattr(v, "item") else v for k, v in params.items()},
            }
        )

    used: set[str] = set()
    for population, plan in (
        (fleet.households, FAULTS_HOUSEHOLDS),
        (fleet.businesses, FAULTS_BUSINESSES),
    ):
        pool = [m for m in population]
        rng.shuffle(pool)
        for type_, n in plan.items():
            for _ in range(n):
                m = pool.pop()
                used.add(m)
                k = index[m]
                s0 = last_week + rng.randrange(0, 5 * SLOTS_DAY)
                a = START_S + s0 * SLOT_S
                if type_ == "consumption_spike":
                    minutes = rng.randint(30, 45)
                    kw = rng.uniform(2.0, 3.0) * busiest[k]
                    a += rng.randrange(0, 5) * 60
                    _add(kwh[k], a, a + minutes * 60, kw)
                    record(type_, [m], a, a + minutes * 60, kw=round(kw, 2))
                elif type_ == "sustained_high":
                    hours = rng.uniform(8, 36)
                    kw = max(1.5, rng.uniform(2.0, 3.0) * mean_kw[k])
                    _add(kwh[k], a, a + hours * 3600, kw)
                    record(type_, [m], a, a + hours * 3600, kw=round(kw, 2))
                elif type_ == "sustained_low":
                    share = rng.uniform(0.2, 0.3)
                    counted[k, s0:] = share
                    record(type_, [m], a, None, share=round(share, 3))
                else:  # zero_use: the register stops, readings go on
                    hours = rng.uniform(8, 48)
                    s1 = min(n_slots, s0 + round(hours * 4))
                    counted[k, s0:s1] = 0.0
                    record(type_, [m], a, START_S + s1 * SLOT_S, hours=round(hours, 1))
    meters = len(fleet.meter_ids)
    tx_of = [k % TRANSFORMERS for k in range(meters)]
    # Outages and dropouts on meters without a consumption fault, in the whole run after
    # the warm-up; two transformer outages in the last week.
    free = [m for m in fleet.meter_ids if m not in used]
    for type_, n in (("outage", OUTAGES), ("comms_dropout", DROPOUTS)):
        for _ in range(n):
            m = rng.choice(free)
            k = index[m]
            a = START_S + (7 * DAY_S) + rng.randrange(0, (spec.days - 8) * DAY_S)
            length = (
                rng.uniform(900, 3 * 3600) if type_ == "outage" else rng.uniform(3600, 6 * 3600)
            )
            b = a + length
            _out(silent[k], kwh[k], a, b, power=type_ == "outage")
            if type_ == "outage":
                signals += [(a, m, "last_gasp"), (b, m, "power_restored")]
                record(type_, [m], a, b, last_gasp=True)
            else:
                record(type_, [m], a, b)
    for t in range(2):
        tx = f"tx-{t + 1}"
        members = [m for k, m in enumerate(fleet.meter_ids) if tx_of[k] == t]
        a = START_S + (spec.days - 6 + 2 * t) * DAY_S + rng.randrange(0, DAY_S)
        b = a + rng.uniform(1800, 4 * 3600)
        for m in members:
            _out(silent[index[m]], kwh[index[m]], a, b, power=True)
            signals += [(a + rng.uniform(0, 2), m, "last_gasp"), (b, m, "power_restored")]
        record("outage", members, a, b, scope="transformer", transformer_id=tx, last_gasp=True)
    register = np.zeros((meters, n_slots + 1))
    base = np.array([rng.uniform(1_000, 40_000) for _ in range(meters)])
    register[:, 0] = base
    register[:, 1:] = base[:, None] + np.cumsum(kwh * counted, axis=1)
    for m, a, b in fleet.away:
        record("holiday", [m], a, b)
    return Injected(register, silent, truth, sorted(signals))


def _add(row: np.ndarray, a: float, b: float, kw: float) -> None:
    """Add `kw` to a meter's 15-minute kWh from a to b (epoch s), pro rata per interval."""
    s = int((a - START_S) // SLOT_S)
    while s < row.size:
        lo = START_S + s * SLOT_S
        hi = lo + SLOT_S
        part = min(hi, b) - max(lo, a)
        if part <= 0:
            break
        row[s] += kw * part / 3600
        s += 1


def _out(silent: np.ndarray, row: np.ndarray, a: float, b: float, *, power: bool) -> None:
    """No reading from a to b; with power gone, no consumption either."""
    s0 = math.ceil((a - START_S) / SLOT_S)
    s1 = math.floor((b - START_S) / SLOT_S)
    silent[s0 : s1 + 1] = True
    if power:
        for s in range(int((a - START_S) // SLOT_S), s1 + 1):
            if 0 <= s < row.size:
                lo = START_S + s * SLOT_S
                part = min(lo + SLOT_S, b) - max(lo, a)
                row[s] *= max(0.0, 1 - part / SLOT_S)


def write_replay(fleet: Fleet, inj: Injected, where: Path) -> Path:
    """The replay file (`traffic.jsonl.gz`), its truth and topology beside it."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / "traffic.jsonl.gz"
    rng = random.Random(fleet.spec.seed + 13)
    with (where / "traffic.topology.csv").open("w", encoding="utf-8") as f:
        f.write("meter_id,transformer_id,feeder_id,customer_id,phases,nominal_voltage_v,prosumer\n")
        for k, m in enumerate(fleet.meter_ids):
            f.write(f"{m},tx-{k % TRANSFORMERS + 1},f-1,c-{m},1,230,false\n")
    with (where / "traffic.truth.jsonl").open("wb") as f:
        for rec in inj.truth:
            f.write(orjson.dumps(rec) + b"\n")
    n_slots = inj.register.shape[1]
    delays = [rng.uniform(2, 25) for _ in fleet.meter_ids]
    sig = inj.signals
    si = 0
    with gzip.open(path, "wb", compresslevel=1) as out:
        for s in range(n_slots):
            ts = START_S + s * SLOT_S
            while si < len(sig) and sig[si][0] <= ts:
                t, m, kind = sig[si]
                out.write(_signal(m, t, kind))
                si += 1
            lines = []
            for k, m in enumerate(fleet.meter_ids):
                if inj.silent[k, s]:
                    continue
                at = ts + delays[k]
                v = 230.0 + rng.uniform(-4, 4)
                lines.append(
                    (
                        at,
                        b'{"meter_id":"%s","ts":"%s","energy_import_kwh":%.3f,'
                        b'"voltage_l1_v":%.1f,"_at":%.3f}\n'
                        % (m.encode(), _rfc(ts).encode(), inj.register[k, s], v, at),
                    )
                )
            lines.sort()
            out.writelines(x for _, x in lines)
        for t, m, kind in sig[si:]:
            out.write(_signal(m, t, kind))
    return path


def _signal(meter_id: str, t: float, kind: str) -> bytes:
    return orjson.dumps({"meter_id": meter_id, "ts": _rfc(t), "type": kind, "_at": t + 0.5}) + b"\n"


def _rfc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
