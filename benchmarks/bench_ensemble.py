"""Speed of seed-ensemble training against training the seeds one after another.

Both sides train the same E models (same initialisations, same data streams, same
optimizer) for the same number of steps:

* sequential — the plain loop a user would write: for each seed, build the model, then
  ``loss = model.loss(u, y); opt.zero_grad(); loss.backward(); opt.step()`` per step;
* ensemble — ``EnsembleTrainer(...).train(steps)`` on all E seeds at once.

Run: ``python benchmarks/bench_ensemble.py`` (defaults: multi_gate on ``adding``, E=8,
T=80, n=64, m=4, batch 64, 100 steps, SGD, float32, CPU). It prints the median time of
each side over ``--repeats`` interleaved runs, their ratio, and the largest difference of
the final losses (a check that both sides did the same work).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import gatescope as gs
from gatescope.training import (
    DATA_STREAM,
    EnsembleTrainer,
    make_optimizer,
    stream_generator,
    task_model_factory,
)


def sequential(args, task, factory) -> torch.Tensor:
    """Train the seeds one after another with a plain loop; ``(E,)`` final-step losses."""
    last = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = factory().to(dtype=args.dtype, device=args.device)
        opt = make_optimizer(args.optimizer, model.parameters(), args.lr)
        gen = stream_generator(seed, DATA_STREAM)
        for _ in range(args.steps):
            u, y = (t.to(args.device) for t in task.sample(args.batch, gen, dtype=args.dtype))
            loss = model.loss(u, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        last.append(loss.detach())
    return torch.stack(last).cpu()


def ensemble(args, task, factory) -> torch.Tensor:
    """Train all seeds at once; ``(E,)`` final-step losses."""
    trainer = EnsembleTrainer(factory, range(args.seeds), task, optimizer=args.optimizer,
                              lr=args.lr, batch_size=args.batch, dtype=args.dtype,
                              device=args.device, mode=args.mode)
    trainer.train(args.steps)
    args.used_mode = trainer.mode
    return trainer.losses[:, -1]


def timed(fn, args, *rest) -> tuple[float, torch.Tensor]:
    """Seconds ``fn(args, *rest)`` takes (device work included) and its result."""
    on_cuda = torch.device(args.device).type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(args, *rest)
    if on_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", default="multi_gate")
    p.add_argument("--task", default="adding")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=80)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--input-size", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", default="auto", choices=["auto", "batched", "vmap"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args()
    args.dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    task = gs.make_task(args.task, seq_len=args.seq_len, input_size=args.input_size)
    factory = task_model_factory(task, args.cell, args.hidden)

    seq_times, ens_times = [], []
    warm_up = argparse.Namespace(**{**vars(args), "steps": 2})  # first-call costs
    timed(sequential, warm_up, task, factory)
    timed(ensemble, warm_up, task, factory)
    for _ in range(args.repeats):
        t, seq_loss = timed(sequential, args, task, factory)
        seq_times.append(t)
        t, ens_loss = timed(ensemble, args, task, factory)
        ens_times.append(t)
    seq, ens = statistics.median(seq_times), statistics.median(ens_times)
    print(f"{args.cell} on {args.task}: E={args.seeds} T={args.seq_len} n={args.hidden} "
          f"m={args.input_size} batch={args.batch} steps={args.steps} {args.optimizer} "
          f"{str(args.dtype).removeprefix('torch.')} {args.device} "
          f"threads={torch.get_num_threads()} mode={args.used_mode}")
    print(f"sequential (plain loop, seeds one after another): median {seq:.3f} s  "
          f"runs {[round(t, 3) for t in seq_times]}")
    print(f"ensemble (EnsembleTrainer, all seeds at once):    median {ens:.3f} s  "
          f"runs {[round(t, 3) for t in ens_times]}")
    print(f"speed-up: {seq / ens:.2f}x")
    print(f"max |final loss difference|: {(seq_loss - ens_loss).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
