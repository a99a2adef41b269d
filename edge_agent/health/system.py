"""What the board reports about itself: process CPU and memory, CPU temperature, throttling
(Raspberry Pi firmware), free disk, load. A figure the board does not report is None."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

THERMAL_ROOT = Path("/sys/class/thermal")
CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp")
VCGENCMD_TIMEOUT = 1.0  # seconds; the stats are built on the agent's main loop
SLOW_CALL = 0.25  # seconds: a slower vcgencmd is asked only every SLOW_EVERY stats
SLOW_EVERY = 10
# `vcgencmd get_throttled` bits: (name, bit now, bit since boot)
THROTTLE_BITS = (
    ("under_voltage", 0, 16),
    ("freq_capped", 1, 17),
    ("throttled", 2, 18),
    ("soft_temp_limit", 3, 19),
)


def parse_throttled(text: str) -> dict[str, Any] | None:
    """`throttled=0x50000` -> {raw, under_voltage, freq_capped, throttled, soft_temp_limit,
    since_boot: {the same four}}; None when the text is not that."""
    match = re.search(r"throttled=(0x[0-9a-fA-F]+)", text)
    if match is None:
        return None
    raw = match.group(1).lower()
    value = int(raw, 16)
    out: dict[str, Any] = {"raw": raw}
    out.update({name: bool(value >> now & 1) for name, now, _ in THROTTLE_BITS})
    out["since_boot"] = {name: bool(value >> boot & 1) for name, _, boot in THROTTLE_BITS}
    return out


def cpu_zone(root: Path = THERMAL_ROOT) -> Path | None:
    """The `temp` file of the CPU's thermal zone (by type), else of the first zone."""
    zones = sorted(root.glob("thermal_zone*"), key=lambda p: int(p.name[12:] or 0))
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip()
        except OSError:
            continue
        if kind in CPU_ZONE_TYPES:
            return zone / "temp"
    return zones[0] / "temp" if zones else None


def read_temp(path: Path | None) -> float | None:
    """Degrees Celsius from a thermal zone's millidegrees, or None."""
    if path is None:
        return None
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux), or None."""
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")


def free_bytes(path: Path | None) -> int | None:
    """Bytes available to this user on the filesystem holding `path` (its nearest existing
    folder), or None."""
    if path is None:
        return None
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def load1() -> float | None:
    """The 1-minute load average, or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class Throttling:
    """`vcgencmd get_throttled` when the binary exists; a slow or failing call is retried only
    every SLOW_EVERY reads (the last answer is repeated in between)."""

    def __init__(self, binary: str | None) -> None:
        self.binary = binary
        self._last: dict[str, Any] | None = None
        self._slow = False
        self._reads = 0

    def read(self) -> dict[str, Any] | None:
        """The parsed flags, or None without vcgencmd (or without an answer yet)."""
        if self.binary is None:
            return None
        self._reads += 1
        if self._slow and self._reads % SLOW_EVERY != 1:
            return self._last
        began = time.monotonic()
        try:
            done = subprocess.run(  # noqa: S603 (a fixed argument list, no shell)
                [self.binary, "get_throttled"],
                capture_output=True,
                text=True,
                timeout=VCGENCMD_TIMEOUT,
                check=False,
            )
            self._last = parse_throttled(done.stdout)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("vcgencmd get_throttled failed: %s", exc)
            self._last = None
        self._slow = self._last is None or time.monotonic() - began > SLOW_CALL
        self._reads = 1 if self._slow else 0
        return self._last


class SystemProbe:
    """Reads the figures of the `system` section. `sample()` advances the CPU interval;
    `cached()` repeats the last interval figures with fresh cheap readings."""

    def __init__(
        self,
        disk: Path | None,
        thermal_root: Path = THERMAL_ROOT,
        vcgencmd: str | None = None,
    ) -> None:
        self.disk = disk
        self._temp = cpu_zone(thermal_root)
        self._throttling = Throttling(vcgencmd or shutil.which("vcgencmd"))
        self._cpu = (time.monotonic(), time.process_time())
        self._cpu_percent: float | None = None
        self._throttled: dict[str, Any] | None = None

    def sample(self) -> dict[str, Any]:
        """The figures now; cpu_percent is over the time since the last call (all threads,
        100 = one core busy)."""
        now, cpu = time.monotonic(), time.process_time()
        wall = now - self._cpu[0]
        if wall > 0:
            self._cpu_percent = round(max(0.0, cpu - self._cpu[1]) / wall * 100.0, 1)
        self._cpu = (now, cpu)
        self._throttled = self._throttling.read()
        return self.cached()

    def cached(self) -> dict[str, Any]:
        """cpu_percent and throttled of the last `sample()`; the rest read now."""
        return {
            "cpu_percent": self._cpu_percent,
            "rss_bytes": rss_bytes(),
            "cpu_temp_c": read_temp(self._temp),
            "throttled": self._throttled,
            "disk_free_bytes": free_bytes(self.disk),
            "load1": load1(),
        }
