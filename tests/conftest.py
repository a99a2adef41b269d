"""Fixtures: the shared models and media must exist, and tests get a private broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import MEDIA, MODELS, SSD, VIDEO, YOLOV8, Broker, Subscriber


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail the run (never skip) when ../shared is missing."""
    missing = [
        p
        for p in (MODELS / "MANIFEST.md", MEDIA / "MANIFEST.md", SSD, YOLOV8, VIDEO)
        if not p.exists()
    ]
    if missing:
        raise pytest.UsageError(
            "shared models/media missing (expected ../shared beside the checkout): "
            + ", ".join(str(p) for p in missing)
        )


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A mosquitto on a private port for the whole session."""
    b = Broker().start()
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    """A subscriber to everything on the session broker."""
    sub = Subscriber(broker.port)
    yield sub
    sub.close()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """Shorter name for tmp_path."""
    return tmp_path
