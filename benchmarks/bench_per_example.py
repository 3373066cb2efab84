"""Speed of ``per_example_gradients`` (``vmap(grad(...))``) against a Python loop of backward
calls, one example at a time, on the anisotropy experiment's size.

Run: ``python benchmarks/bench_per_example.py`` (prints the medians of ``--repeats`` runs,
their ratio, and the largest difference between the two gradient matrices).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import gatescope as gs
from gatescope.measures import per_example_gradients


def loop_gradients(model: gs.SequenceModel, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One ``torch.autograd.grad`` per example, rows flattened in parameter order."""
    params = list(model.parameters())
    rows = []
    for i in range(u.shape[0]):
        grads = torch.autograd.grad(model.loss(u[i:i + 1], y[i:i + 1]), params)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=120)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--input", type=int, default=6)
    parser.add_argument("--cell", default="multi_gate")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = gs.SequenceModel(gs.make_cell(args.cell, args.input, args.hidden), 1)
    u = torch.rand(args.examples, args.seq_len, args.input)
    y = torch.rand(args.examples, 1)

    def timed(fn):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times), out

    per_example_gradients(model, u, y, chunk_size=args.chunk_size)  # warm-up
    fast_time, fast = timed(lambda: per_example_gradients(model, u, y, chunk_size=args.chunk_size))
    loop_time, loop = timed(lambda: loop_gradients(model, u, y))
    diff = ((fast - loop).abs().max() / loop.abs().max()).item()
    print(f"{args.cell}: M={args.examples} T={args.seq_len} n={args.hidden} m={args.input} "
          f"float32, P={fast.shape[1]} parameters, {torch.get_num_threads()} threads")
    print(f"per_example_gradients (vmap) median {fast_time:.3f} s")
    print(f"loop of backward calls       median {loop_time:.3f} s")
    print(f"speed-up {loop_time / fast_time:.2f}x  (max |difference| / max |gradient| {diff:.1e})")


if __name__ == "__main__":
    main()
