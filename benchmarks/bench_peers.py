"""Where peers were faster (issue 16): gatescope against the method a user would write.

For GRU and LSTM (n = 64, B = 32, m = 4, float32, one thread) it prints each method's median
over ``--repeats`` interleaved repetitions and the ratio peer / gatescope (> 1: gatescope
faster), with the largest difference of the two results as a check that both did the same
work:

* ``lag_gradients`` (readout "last", T = 50; readout "all", T = 30) against autograd with a
  leaf copy of the parameters per time step (torch's ``nn.GRUCell``/``nn.LSTMCell`` through
  ``functional_call``): one backward pass for "last", one per loss step for "all";
* ``jacobians`` (T = 30, from a trajectory) against ``vmap(jacrev)`` of the torch cell's step;
* one training step of an 8-seed LSTM ensemble (``EnsembleTrainer.step``, all seeds in one
  pass and ``seeds_per_pass=4``) against a loop over 8 models built on torch's fused
  ``nn.LSTM`` (same initialisation, same batches).

Run: ``python benchmarks/bench_peers.py`` (``--only lag,jacobians,ensemble`` for a part).
The machine this runs on may be shared: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import gatescope as gs
from gatescope.training import (
    DATA_STREAM,
    EnsembleTrainer,
    fused_lstm,
    make_optimizer,
    stream_generator,
    task_model_factory,
)

TORCH_CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int
                        ) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of each function over ``repeats`` rounds (one call of each per round,
    after one warm-up call each), and each one's last result."""
    out = {k: fn() for k, fn in fns.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, out


def report(label: str, ours: str, peer: str, medians: dict[str, float], diff: float) -> None:
    ratio = medians[peer] / medians[ours]
    print(f"{label:<34} gatescope {1e3 * medians[ours]:8.1f} ms   {peer:<22} "
          f"{1e3 * medians[peer]:8.1f} ms   ratio {ratio:5.2f}x   max diff {diff:.1e}")


# ----------------------------------------------------------------------------- torch peers

def torch_cell(cell: gs.RecurrentCell) -> nn.Module:
    """torch's cell holding the gatescope cell's weights (same layout)."""
    ref = TORCH_CELLS[cell.name](cell.input_size, cell.hidden_size)
    ref.load_state_dict(cell.state_dict())
    return ref


def torch_step(ref: nn.Module, n: int) -> Callable:
    """``(params, state, u) -> next state`` of torch's cell on gatescope's state layout."""
    if isinstance(ref, nn.LSTMCell):
        def step(params, s, u):
            h, c = functional_call(ref, params, (u, (s[..., :n], s[..., n:])))
            return torch.cat([h, c], -1)
    else:
        def step(params, s, u):
            return functional_call(ref, params, (u, s))
    return step


def copies_forward(model: gs.SequenceModel, ref: nn.Module, u: torch.Tensor):
    """Unroll torch's cell with a fresh leaf copy of its parameters at every step."""
    n, T = model.cell.hidden_size, u.shape[1]
    params = {k: v.detach() for k, v in ref.named_parameters()}
    copies = [{k: v.clone().requires_grad_() for k, v in params.items()} for _ in range(T)]
    step = torch_step(ref, n)
    s = u.new_zeros(u.shape[0], model.cell.state_size)
    states = [s]
    for t in range(T):
        s = step(copies[t], s, u[:, t])
        states.append(s)
    return copies, torch.stack(states, 1)


def copies_last(model, ref, u, y) -> dict[str, torch.Tensor]:
    """Readout "last": one backward; the copy at step ``T - ℓ`` holds ``G_ℓ``."""
    copies, states = copies_forward(model, ref, u)
    loss = model.loss_from_states(states, y)
    leaves = [p for c in copies for p in c.values()]
    grads = iter(torch.autograd.grad(loss, leaves))
    per_step = [{k: next(grads) for k in c} for c in copies]
    return {k: torch.stack([g[k] for g in per_step[::-1]]) for k in copies[0]}


def copies_all(model, ref, u, y) -> dict[str, torch.Tensor]:
    """Readout "all": one backward per loss step ``t``; the copy at step ``k`` gets
    ``∂L_t/∂θ_k``, which belongs to lag ``t - k``."""
    copies, states = copies_forward(model, ref, u)
    B, T = u.shape[:2]
    pred = model.readout(states[:, 1:, : model.cell.hidden_size])
    per_t = ((pred - y) ** 2).mean(-1).sum(0) / (B * T)  # (T,): L = Σ_t L_t
    lagged = {k: torch.zeros(T, *v.shape) for k, v in copies[0].items()}
    for t in range(T):
        leaves = [p for c in copies[: t + 1] for p in c.values()]
        grads = iter(torch.autograd.grad(per_t[t], leaves, retain_graph=True))
        for k_step in range(t + 1):
            for name in copies[0]:
                lagged[name][t - k_step] += next(grads)
    return lagged


def jacrev_jacobians(model, ref, states, u) -> torch.Tensor:
    """``vmap(jacrev)`` of torch's cell step at every ``(b, t)``: ``(B, T, N, N)``."""
    params = {k: v.detach() for k, v in ref.named_parameters()}
    step = torch_step(ref, model.cell.hidden_size)
    N, m = states.shape[-1], u.shape[-1]
    h, x = states[:, :-1].reshape(-1, N), u.reshape(-1, m)
    J = vmap(jacrev(lambda s, v: step(params, s, v)))(h, x)
    return J.reshape(*u.shape[:2], N, N)


def cell_parts(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[5:]: v for k, v in parts.items() if k.startswith("cell.")}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ----------------------------------------------------------------------------- sections

def bench_lag(args, name: str) -> None:
    for readout, T in (("last", 50), ("all", 30)):
        torch.manual_seed(0)
        model = gs.SequenceModel(gs.make_cell(name, args.input, args.hidden), 1,
                                 readout=readout)
        ref = torch_cell(model.cell)
        u = torch.randn(args.batch, T, args.input)
        y = torch.randn(args.batch, 1) if readout == "last" else torch.randn(args.batch, T, 1)
        peer = copies_last if readout == "last" else copies_all
        med, out = interleaved_medians({
            "gatescope": lambda: gs.lag_gradients(model, u, y),  # noqa: B023
            "per-step copies": lambda: peer(model, ref, u, y),  # noqa: B023
        }, args.repeats)
        diff = max_diff(out["per-step copies"], cell_parts(out["gatescope"]))
        report(f"{name} lag_gradients {readout} T={T}", "gatescope", "per-step copies", med,
               diff)


def bench_jacobians(args, name: str) -> None:
    T = 30
    torch.manual_seed(0)
    cell = gs.make_cell(name, args.input, args.hidden)
    model = gs.SequenceModel(cell, 1)
    ref = torch_cell(cell)
    u = torch.randn(args.batch, T, args.input)
    with torch.no_grad():
        traj = cell.unroll(u)
    states = traj.states
    med, out = interleaved_medians({
        "gatescope": lambda: gs.jacobians(cell, traj),
        "vmap(jacrev)": lambda: jacrev_jacobians(model, ref, states, u),
    }, args.repeats)
    diff = (out["gatescope"] - out["vmap(jacrev)"]).abs().max().item()
    report(f"{name} jacobians T={T}", "gatescope", "vmap(jacrev)", med, diff)


class FusedLSTMModel(nn.Module):
    """torch's fused ``nn.LSTM`` and a linear readout, with a gatescope model's weights."""

    def __init__(self, model: gs.SequenceModel) -> None:
        super().__init__()
        cell = model.cell
        self.lstm = nn.LSTM(cell.input_size, cell.hidden_size, batch_first=True)
        self.readout = nn.Linear(cell.hidden_size, model.readout.out_features)
        with torch.no_grad():
            for k, v in cell.named_parameters():
                getattr(self.lstm, f"{k}_l0").copy_(v)
            self.readout.load_state_dict(model.readout.state_dict())
        self.last = model.readout_kind == "last"
        self.loss_from_predictions = model.loss_from_predictions

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(u)
        return self.readout(out[:, -1] if self.last else out)


def bench_ensemble(args) -> None:
    seeds, T = 8, 50
    task = gs.make_task("adding", seq_len=T, input_size=args.input)
    factory = task_model_factory(task, "lstm", args.hidden)
    trainers = {f"seeds_per_pass={k}": EnsembleTrainer(
        factory, range(seeds), task, optimizer="sgd", lr=1e-2, batch_size=args.batch,
        seeds_per_pass=k) for k in (None, 4)}
    loop = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        fused = FusedLSTMModel(factory())
        loop.append((fused, make_optimizer("sgd", fused.parameters(), 1e-2),
                     stream_generator(seed, DATA_STREAM)))

    def loop_step() -> torch.Tensor:
        losses = []
        for fused, opt, gen in loop:
            u, y = task.sample(args.batch, gen)
            loss = fused.loss_from_predictions(fused(u), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    peer = "loop of fused nn.LSTM"
    fns = {name: trainer.step for name, trainer in trainers.items()} | {peer: loop_step}
    med, out = interleaved_medians(fns, args.repeats)
    cell = trainers["seeds_per_pass=None"].model(0).cell
    path = "fused LSTM" if fused_lstm.fused_lstm_applies(cell) else "unrolled"
    for name, trainer in trainers.items():
        diff = (out[name] - out[peer]).abs().max().item()
        report(f"lstm ensemble E={seeds} T={T} {name} ({trainer.mode}, {path})", name, peer,
               med, diff)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--input", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", default="lag,jacobians,ensemble")
    p.add_argument("--cells", default="gru,lstm")
    args = p.parse_args()
    torch.set_num_threads(1)
    parts = set(args.only.split(","))
    print(f"n={args.hidden} B={args.batch} m={args.input} float32, 1 thread, medians of "
          f"{args.repeats} interleaved repetitions; ratio = peer / gatescope (> 1: faster)")
    for name in args.cells.split(","):
        if "lag" in parts:
            bench_lag(args, name)
        if "jacobians" in parts:
            bench_jacobians(args, name)
    if "ensemble" in parts:
        bench_ensemble(args)


if __name__ == "__main__":
    main()
