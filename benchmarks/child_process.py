"""A benchmark's measurement in a fresh subprocess, so that its peak memory is its own.

The script runs itself again with ``--child``; the child measures, then prints its result
with :func:`print_result` (the process' peak resident memory added), and the parent reads it
back with :func:`run_child`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Sequence


def print_result(**fields) -> None:
    """Print ``fields`` and ``peak_gib`` (this process' maxrss in GiB) as one JSON line."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    print(json.dumps({**fields, "peak_gib": peak}))


def run_child(script: str, args: Sequence[str]) -> dict:
    """Run ``script`` with ``args`` and ``--child`` in a new Python process; the dict its
    :func:`print_result` printed (its last line of output)."""
    out = subprocess.run([sys.executable, script, *args, "--child"], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])
