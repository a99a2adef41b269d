"""The publisher thread's network wait: paho's socket and a wake-up socket in one select().

paho's own loop() waits on its socket for a fixed time, so a message staged in the outbox
waited up to that long before it was sent, and an idle publisher woke up 50 times a second.
Here the thread sleeps until the broker sends something, a producer stages a message
(`Waker.wake`), or a deadline of its own (acks to delete, keepalive) comes: the loop paho
documents for external event loops (socket(), loop_read(), loop_write(), loop_misc()).
"""

from __future__ import annotations

import contextlib
import select
import socket
from typing import Any

from paho.mqtt.enums import MQTTErrorCode


class Waker:
    """A socket pair that interrupts the publisher's select() from any thread.

    `wake()` writes a byte only while the publisher is about to sleep or sleeping: it sets
    `sleeping` before its last look for work, so a producer that stages a message after that
    look sees the flag and wakes it, and one that staged before is found by the look."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.sleeping = False
        self.woken = False  # set when a select() returned for a wake-up

    def wake(self) -> None:
        """Interrupt the publisher's wait (cheap when it is not waiting)."""
        if not self.sleeping:
            return
        # BlockingIOError: a wake-up is already pending; OSError: the publisher is closing.
        with contextlib.suppress(OSError):
            self._write.send(b"\0")

    def fileno(self) -> int:
        """The readable end, for select()."""
        return self._read.fileno()

    def drain(self) -> None:
        """Take the pending wake-ups (sets `woken`)."""
        self.woken = True
        with contextlib.suppress(OSError):  # BlockingIOError: nothing (more) to read
            while self._read.recv(4096):
                pass

    def close(self) -> None:
        """Release both sockets."""
        self._read.close()
        self._write.close()


def network_turn(client: Any, waker: Waker, timeout: float) -> MQTTErrorCode:
    """Wait up to `timeout` s for the broker or a wake-up, then let paho read, write and
    keep the connection alive; paho's return code (not SUCCESS: the connection is gone)."""
    sock = client.socket()
    if sock is None:
        return MQTTErrorCode.MQTT_ERR_NO_CONN
    pending = getattr(sock, "pending", None)
    buffered = pending() if pending is not None else 0  # TLS bytes already decrypted
    if buffered > 0:
        timeout = 0.0
    writes = [sock] if client.want_write() else []
    try:
        readable, writable, _ = select.select([sock, waker], writes, [], timeout)
    except (OSError, TypeError, ValueError):  # the socket was closed under us
        return MQTTErrorCode.MQTT_ERR_CONN_LOST
    if waker in readable:
        waker.drain()
    # As paho's own loop: a read or write that ends the connection ends the turn (paho has
    # then reported the disconnect through its callback).
    if sock in readable or buffered > 0:
        rc: MQTTErrorCode = client.loop_read()
        if rc or client.socket() is None:
            return rc
    if sock in writable:
        rc = client.loop_write()
        if rc or client.socket() is None:
            return rc
    result: MQTTErrorCode = client.loop_misc()
    return result
