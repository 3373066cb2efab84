"""Subnormal floats flushed to zero while gatescope trains and measures on the CPU.

Gradients that vanish through long sequences, and Adam's second moments of such gradients,
fall below float32's smallest normal number (``1.2e-38``). x86 processors handle these
subnormal numbers in microcode, many times slower: in the paper's ``anisotropy`` experiment
the plain cell under Adam on ``adding`` trained 8.6 times slower per step once they
appeared (858 ms against 94 ms per step with them flushed). With the mode on, subnormal
inputs and results are read and written as zero (below ``1.2e-38`` in float32, ``2.2e-308``
in float64); what is computed from them can change, e.g. an Adam step of a parameter whose
gradient moments are subnormal becomes 0 instead of about ``1e-31``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def flush_denormals() -> Iterator[bool]:
    """Treat subnormal floats as zero on the calling thread while the block runs.

    The mode belongs to the calling CPU thread (``torch.set_flush_denormal``), so it takes
    full effect with one torch thread per process, as gatescope's worker processes run;
    torch's extra intra-op threads keep theirs (so results of a multi-threaded process can
    differ from those of single-threaded workers in subnormal-level quantities). torch has no
    getter for the mode, so on exit it is switched off, which is torch's default; the block
    does not nest.

    Yields:
        Whether the processor supports the mode (``False``: nothing changed).
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        if supported:
            torch.set_flush_denormal(False)
