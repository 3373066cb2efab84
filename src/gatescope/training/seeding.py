"""Seeds: how one integer seed becomes a model initialisation and independent random streams.

Seed ``k`` initialises its model with torch's CPU generator seeded with ``k`` itself, so
``torch.manual_seed(k); model = factory()`` reproduces the initialisation a trainer uses.
Every other random stream of seed ``k`` (training batches, evaluation batches, probe
batches, ...) comes from its own ``torch.Generator`` seeded with
:func:`derive_seed` ``(k, stream)``, a 63-bit hash, so the streams are independent of each
other and of the initialisation, and equal wherever seed ``k`` runs: alone, in an ensemble
of any size, or resumed from a checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

import torch

#: Stream names used by gatescope itself.
DATA_STREAM = "data"
EVAL_STREAM = "eval"

T = TypeVar("T")


def derive_seed(seed: int, stream: str) -> int:
    """A seed for ``stream`` of ``seed``: the first 63 bits of ``sha256("gatescope/stream/seed")``.

    Args:
        seed: the run's integer seed.
        stream: the stream's name, e.g. ``"data"``, ``"eval"`` or ``"probe"``.
    """
    digest = hashlib.sha256(f"gatescope/{stream}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` ``(seed, stream)``."""
    return torch.Generator().manual_seed(derive_seed(seed, stream))


def seeded_init(factory: Callable[[], T], seed: int) -> T:
    """``factory()`` called with torch's CPU generator seeded with ``seed``.

    The global generator's state is restored afterwards, so building a model this way
    changes nothing else. Equivalent to ``torch.manual_seed(seed); factory()`` for a factory
    that draws on the CPU.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        return factory()
