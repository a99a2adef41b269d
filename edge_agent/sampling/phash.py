"""64-bit perceptual hash (DCT) and near-duplicate suppression over a window of frame time."""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from edge_agent.sampling.budget import EPSILON_S
from edge_agent.sampling.config import Dedup
from edge_agent.types import Image

HASH_SIDE = 32  # the image is reduced to 32x32 grey; the lowest 8x8 frequencies are kept
KEEP = 8


def phash(image: Image) -> int:
    """pHash: the sign of the 8x8 lowest DCT frequencies (DC excluded from the median) of the
    32x32 grey image. Robust to scaling, JPEG and small shifts; changes with the scene."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA)
    low = np.asarray(cv2.dct(small.astype(np.float32)))[:KEEP, :KEEP].ravel()
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def distance(a: int, b: int) -> int:
    """Hamming distance of two hashes."""
    return (a ^ b).bit_count()


def hex64(value: int) -> str:
    """A hash as 16 hex digits (the payload's `phash`)."""
    return f"{value:016x}"


class Deduper:
    """Remembers the hashes of published samples for `window` seconds of frame time."""

    def __init__(self, cfg: Dedup) -> None:
        self.cfg = cfg
        self._seen: deque[tuple[float, int]] = deque()

    def duplicate(self, value: int, ts: float) -> bool:
        """Whether a sample with this hash at ts is within max_distance of a recent one."""
        if not self.cfg.enabled:
            return False
        while self._seen and self._seen[0][0] <= ts - self.cfg.window + EPSILON_S:
            self._seen.popleft()
        return any(distance(value, seen) <= self.cfg.max_distance for _, seen in self._seen)

    def add(self, value: int, ts: float) -> None:
        """Record a published sample's hash."""
        self._seen.append((ts, value))
