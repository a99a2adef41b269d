"""Allocator settings for a long-running, frame-sized workload on a small board."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# glibc mallopt() parameters (malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENAS = 2
# Frames, tensors and JPEGs are large and short-lived. Above this size they are mapped and
# unmapped on free, so a burst never leaves a frame-sized hole resident in a thread's heap.
# Setting it also stops glibc from raising the threshold on its own after the first frames.
MMAP_THRESHOLD = 256 * 1024


def tune_allocator() -> bool:
    """Cap glibc's per-thread heaps and map large buffers; True when applied. A setting the
    environment gives (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_) is left alone; other C
    libraries (musl) are left alone. Call before the agent's threads start."""
    if platform.libc_ver()[0] != "glibc":
        return False
    wanted = [
        (param, value)
        for param, value, env in (
            (M_ARENA_MAX, ARENAS, "MALLOC_ARENA_MAX"),
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
        )
        if env not in os.environ
    ]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        results = [libc.mallopt(param, value) for param, value in wanted]
    except (OSError, AttributeError) as exc:
        log.debug("allocator settings not applied: %s", exc)
        return False
    return all(results)
