"""systemd's notify protocol (sd_notify): readiness, status lines and the watchdog.

A datagram of `KEY=VALUE` lines to the unix socket in $NOTIFY_SOCKET (a leading `@` is the
abstract namespace). Without $NOTIFY_SOCKET (not started by systemd with Type=notify) every
call does nothing. The watchdog is fed only while every pipeline thread's heartbeat is fresh:
a hung detector, camera thread or encoder stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

MAX_STATUS = 200  # characters of a STATUS= line (systemctl shows one line)


class Notifier:
    """The service manager's notify socket, if there is one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)
        self.ready_sent = False
        self._next_ping = 0.0
        self._silent: str | None = None  # why the last ping was withheld (logged once)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send fields (READY="1", STATUS=...); False when there is no socket or it failed."""
        if self.address is None:
            return False
        text = "".join(f"{key}={value}\n" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), self.address)
        except OSError as exc:
            log.warning("systemd notify socket %r: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        """READY=1 once, with a status line."""
        if not self.ready_sent:
            self.ready_sent = self.send(READY="1", STATUS=_line(status)) or not self.enabled

    def status(self, text: str) -> None:
        """A short STATUS= line (systemctl status shows it)."""
        self.send(STATUS=_line(text))

    def stopping(self, status: str) -> None:
        """STOPPING=1: the service is shutting down (delivering, then exiting)."""
        self.send(STOPPING="1", STATUS=_line(status))

    def watchdog(self, now: float, ages: Mapping[str, float]) -> bool:
        """Ping the watchdog when due and every heartbeat is younger than half its timeout;
        True when a ping was sent. A thread that stopped beating is logged once."""
        interval = self.watchdog_interval
        if interval is None or now < self._next_ping:
            return False
        limit = interval  # half the timeout: systemd allows the other half for the next ping
        stale = sorted(name for name, age in ages.items() if age > limit)
        if stale:
            names = ", ".join(stale)  # logged once per set of silent threads, not per age
            if names != self._silent:
                why = ", ".join(f"{name} ({ages[name]:.0f} s)" for name in stale)
                log.error("watchdog not fed: no heartbeat from %s; systemd will restart", why)
                self._silent = names
            return False
        self._silent = None
        self._next_ping = now + interval / 2
        return self.send(WATCHDOG="1")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | None:
    if not value or value[0] not in "/@":
        return None  # unset, or a vsock address (not used on a board)
    return "\0" + value[1:] if value[0] == "@" else value


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WatchdogSec= in seconds, when the watchdog is meant for this process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", "0") or 0)
    except ValueError:
        return None
    if usec <= 0 or (pid and pid != os.getpid()):
        return None
    return usec / 1e6 / 2


def _line(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= MAX_STATUS else one[: MAX_STATUS - 1] + "…"
