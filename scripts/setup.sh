#!/usr/bin/env bash
# Installs everything meter-gateway needs on a fresh Debian/Ubuntu machine:
# the Debian packages (mosquitto, victoria-metrics, influxdb, socat; prometheus for
# promtool and systemd for systemd-analyze, which check deploy/; chromium for the
# status page test) where missing,
# a virtual environment in .venv, and the pinned Python packages.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v socat >/dev/null 2>&1 || need+=(socat)
# tests/deploy checks the artefacts in deploy/ with the real tools:
# `promtool check rules` / `promtool test rules` and `systemd-analyze verify`.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The status page is checked in a real headless browser (Playwright drives it).
[ -x /usr/bin/chromium ] || need+=(chromium)
# Local days (daily figures, billing) are judged in gateway.timezone: the IANA database.
[ -f /usr/share/zoneinfo/Europe/Berlin ] || need+=(tzdata)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The event detectors' per-reading path is compiled (mypyc, in setup.py): a C compiler
# and Python's headers.
command -v gcc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1 || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
    # Debian starts the packaged services on install; ours run on free ports in
    # temporary folders, so the system-wide ones are not needed.
    for svc in mosquitto influxdb victoria-metrics prometheus; do
        $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating the virtual environment .venv" >&2
    "$PY" -m venv .venv
fi
# The compiled modules (listed in gateway/events/compiled_modules.py, which setup.py
# reads too) are built from their sources: a changed source is a new build (until then
# the gateway runs that part as plain Python, and says so).
listed=$(.venv/bin/python -c '
import runpy
for m in runpy.run_path("gateway/events/compiled_modules.py")["MODULES"]:
    print("gateway/events/" + m.replace(".", "/") + ".py")
')
mapfile -t compiled <<<"$listed"
stamp=.venv/.installed-$(cat pyproject.toml requirements.lock setup.py gateway/events/compiled_modules.py "${compiled[@]}" | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
    echo "setup: installing Python packages (pinned in pyproject.toml and requirements.lock) and compiling the detectors' hot path" >&2
    .venv/bin/python -m pip install -q --upgrade pip >&2
    # An editable install compiles only when asked (setup.py): here it is, so that this
    # venv and CI run the compiled build the wheel ships.
    METER_GATEWAY_COMPILE=1 .venv/bin/python -m pip install -q -c requirements.lock -e '.[dev]' >&2
    rm -f .venv/.installed-*
    touch "$stamp"
fi
