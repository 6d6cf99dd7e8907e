"""Heap memory given back to the operating system after an unusually large frame (glibc ``malloc_trim``).

The activations of a large image (a 4000x3000 camera frame, downscaled by the nodes to 1.5 Mpx, is still 5x the
usual 640x480) are freed into glibc's arenas after the frame, which keep most of them: measured on the
xfeat_lighterglue tracker, the process stayed 24-66 MB above its size before the large frame for as long as it ran
(issue #20). ``LargeFrameTrim.frame(pixels)``, called by each core before it processes a frame, runs
``malloc_trim(0)`` when the previous frame was much larger than this one: the memory comes back (607 -> 551 MB,
then 578 MB with the normal frames' working set) at the cost of one trim (a few ms) per drop in image size.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_libc = None  # the C library once looked up, False where it has no malloc_trim (musl, macOS)


def malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: the free pages of every arena back to the OS. True when memory was released;
    False also where the C library has no malloc_trim."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return bool(_libc and _libc.malloc_trim(0))


class LargeFrameTrim:
    """``frame(pixels)`` before each frame: ``malloc_trim`` when the previous frame had more than ``factor`` times
    as many pixels (its memory is free by then). ``trims`` counts them."""

    def __init__(self, factor: float = 1.5):
        self.factor, self.last, self.trims = float(factor), 0, 0

    def frame(self, pixels: int) -> bool:
        """True when the heap was trimmed now."""
        trim = self.last > self.factor * pixels
        self.last = int(pixels)
        if trim:
            malloc_trim()
            self.trims += 1
        return trim
