"""What every benchmark states about where it ran: the date, the machine, the versions,
the filesystem its data is on; and where its temporary data goes.

Numbers are only comparable between runs on the same machine and build, so each bench
prints these lines first and `bench/README.md` quotes them with its results. A bench
imports this module as `import common`: run as `python bench/<name>.py`, its own
folder is first on `sys.path`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "DPKG_VERSION",
    "ROOT",
    "Mount",
    "cpu_model",
    "disk_tempdir",
    "environment",
    "in_memory",
    "load_average",
    "mount_of",
    "version_of",
]

ROOT = Path(__file__).resolve().parent.parent
# The version of a Debian package (`version_of([*DPKG_VERSION, "victoria-metrics"])`),
# for servers whose binary has no version flag.
DPKG_VERSION = ["dpkg-query", "-W", "-f", "${Version}"]


class Mount(NamedTuple):
    """The filesystem holding a path, from /proc/mounts."""

    point: str
    fstype: str
    device: str
    options: str


def mount_of(path: Path) -> Mount:
    """The mount point, filesystem type, device and options of the filesystem holding `path`."""
    path = path.resolve()
    best = Mount("/", "?", "?", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype, opts = line.split()[:4]
                mnt = mnt.replace("\\040", " ")
                if path.is_relative_to(mnt) and len(mnt) >= len(best.point):
                    best = Mount(mnt, fstype, dev, opts)
    except OSError:
        pass
    return best


def in_memory(path: Path) -> bool:
    """On tmpfs or ramfs, where an fsync costs nothing."""
    return mount_of(path).fstype in ("tmpfs", "ramfs")


def disk_tempdir() -> Path:
    """Where the temporary folder goes: the system's, unless that is in memory (tmpfs),
    where the spool's fsyncs would cost nothing; then beside the repository."""
    tmp = Path(tempfile.gettempdir())
    if in_memory(tmp):
        return ROOT
    return tmp


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def version_of(cmd: list[str]) -> str:
    """The first line a program prints about its version, or "?" without the program."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def _detectors() -> str:
    # Imported here: the benches that never start the gateway need not load it.
    from meter_gateway.gateway.events import compiled

    return compiled.status


def environment(packages: Iterable[str] = (), *, detectors: bool = False) -> list[str]:
    """The header of a bench's output: date, machine, Python, the given packages'
    versions, and with `detectors` which build of the event detectors runs (compiled
    or their Python sources: rates depend on it)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"date        {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"machine     {cpu_model()}, {platform.machine()}, {cpus} usable CPUs "
        f"({os.cpu_count()} online), load average {load_average()}",
        f"system      {platform.platform()}",
        f"python      {platform.python_version()} ({platform.python_implementation()})",
    ]
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)
    if versions:
        lines.append(f"packages    {versions}")
    if detectors:
        lines.append(f"detectors   {_detectors()}")
    return lines
