"""The fused LSTM path of seed ensembles (:mod:`gatescope.training.fused_lstm`): states and
gradients against autograd through ``LSTMCell``, an LSTM ensemble against its seeds trained
alone, divergence isolation, and the models that keep the step-by-step path."""

from __future__ import annotations

import pytest
import torch

import gatescope as gs
from gatescope.cells.lstm import LSTMCell
from gatescope.training import (
    DATA_STREAM,
    EnsembleTrainer,
    derive_seed,
    fused_lstm,
    make_optimizer,
    task_model_factory,
)
from gatescope.training import forward as forward_module

TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-4, atol=1e-5)
WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def stacked_cells(E=3, m=3, n=5, bias=True, dtype=torch.float64, seed=0):
    """E LSTM cells and their parameters stacked as ``(E, ...)`` leaves."""
    torch.manual_seed(seed)
    cells = [LSTMCell(m, n, bias=bias).to(dtype) for _ in range(E)]
    stacks = {k: torch.stack([getattr(c, k) for c in cells]).detach().requires_grad_()
              for k, _ in cells[0].named_parameters()}
    return cells, stacks


def states_of(u, stacks, last_only):
    return fused_lstm.fused_lstm_states(u, *[stacks.get(k) for k in WEIGHTS],
                                        last_only=last_only)


def reference(cells, u, last_only):
    """The cells unrolled one by one (autograd through every op), in the fused layout."""
    n = cells[0].hidden_size
    states = torch.stack([c.unroll(u[e]).states[..., :n] for e, c in enumerate(cells)])
    states = states.transpose(1, 2)  # (E, T+1, B, n)
    return states[:, -1] if last_only else states


def compare_with_autograd(bias, last_only, dtype, tol):
    cells, stacks = stacked_cells(bias=bias, dtype=dtype)
    u = torch.randn(3, 4, 7, 3, dtype=dtype)
    got = states_of(u, stacks, last_only)
    want = reference(cells, u, last_only)
    torch.testing.assert_close(got, want, **tol)
    weight = torch.randn_like(got)
    grads = torch.autograd.grad((got * weight).sum(), list(stacks.values()))
    (want * weight).sum().backward()
    for (name, _), grad in zip(stacks.items(), grads, strict=True):
        expected = torch.stack([getattr(c, name).grad for c in cells])
        torch.testing.assert_close(grad, expected, **tol, msg=name)


@pytest.mark.parametrize("last_only", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_batched_recurrence_matches_autograd_in_float64(bias, last_only):
    """The hand-written BPTT (one product per step for all seeds) gives autograd's
    states and gradients through LSTMCell to 1e-10."""
    compare_with_autograd(bias, last_only, torch.float64, TOL64)


@pytest.mark.parametrize("kernel", ["torch", "scan"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("last_only", [True, False])
def test_float32_is_close_to_autograd_on_either_kernel(last_only, bias, kernel, monkeypatch):
    """float32 on the CPU runs torch's LSTM kernel per seed; with oneDNN switched off, the
    scan (tanh evaluated as 2σ(2x)-1). Both stay within rounding of the cell's own step."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", kernel == "torch")
    assert fused_lstm._vendor_kernel_applies(torch.zeros(1)) == (kernel == "torch")
    compare_with_autograd(bias, last_only, torch.float32, TOL32)


def test_float32_on_the_cpu_calls_torchs_kernel_once_per_seed(monkeypatch):
    calls = []
    original = torch.lstm

    def spy(*args):
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(torch, "lstm", spy)
    _, stacks = stacked_cells(dtype=torch.float32)
    states_of(torch.randn(3, 4, 7, 3), stacks, False)
    assert calls == [torch.Size([4, 7, 3])] * 3
    calls.clear()
    states_of(torch.randn(3, 4, 7, 3, dtype=torch.float64),
              stacked_cells(dtype=torch.float64)[1], False)
    assert not calls, "float64 must run the scan (torch's kernel has no oneDNN float64)"


@pytest.mark.parametrize("last_only", [True, False])
def test_batched_recurrence_passes_gradcheck(last_only):
    """Every input, the sequences included, against finite differences."""
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(2, 2, 3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = [torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
               for shape in ((2, 8, 2), (2, 8, 2), (2, 8), (2, 8))]
    assert torch.autograd.gradcheck(
        lambda *a: fused_lstm.fused_lstm_states(*a, last_only=last_only), (u, *weights))


def test_batched_recurrence_without_grad_gives_the_same_states():
    """The forward that keeps nothing for a backward pass (probes, ``losses_on``)."""
    _, stacks = stacked_cells()
    u = torch.randn(3, 4, 7, 3, dtype=torch.float64)
    with_grad = states_of(u, stacks, False)
    with torch.no_grad():
        without = states_of(u, stacks, False)
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)


def test_bad_shapes_name_the_argument():
    _, stacks = stacked_cells()
    u = torch.randn(3, 4, 7, 3, dtype=torch.float64)
    args = [stacks[k] for k in WEIGHTS]
    with pytest.raises(ValueError, match="u must be"):
        fused_lstm.fused_lstm_states(u[0], *args)
    with pytest.raises(ValueError, match="weight_ih must be"):
        fused_lstm.fused_lstm_states(u[..., :2], *args)
    with pytest.raises(ValueError, match="both"):
        fused_lstm.fused_lstm_states(u, args[0], args[1], args[2], None)
    with pytest.raises(ValueError, match="bias_hh must be"):
        fused_lstm.fused_lstm_states(u, *args[:3], args[3][:, :4])


# ----------------------------------------------------------------------------- the trainer

def ensemble(task, seeds, dtype=torch.float64, optimizer="adam", cell="lstm", **options):
    return EnsembleTrainer(task_model_factory(task, cell, 5, **options), seeds, task,
                           optimizer=optimizer, lr=0.05, batch_size=4, dtype=dtype)


def alone(task, seed, steps, dtype=torch.float64, optimizer="adam"):
    """Seed ``seed`` trained by hand with the cell's own step (no ensemble code)."""
    torch.manual_seed(seed)
    model = task_model_factory(task, "lstm", 5)().to(dtype)
    opt = make_optimizer(optimizer, model.parameters(), 0.05)
    gen = torch.Generator().manual_seed(derive_seed(seed, DATA_STREAM))
    losses = []
    for _ in range(steps):
        u, y, *mask = task.sample(4, gen, dtype=dtype)
        loss = model.loss(u, y, *mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), model


@pytest.mark.parametrize("task_name", ["adding", "copy"])
def test_lstm_ensemble_equals_its_seeds_alone_in_float64(task_name):
    """Readout "last" (adding) and "all" with cross-entropy (copy), through the fused path."""
    task = gs.make_task(task_name, seq_len=8)
    ens = ensemble(task, [2, 0, 5]).train(5)
    assert ens.mode == "batched"
    for k, seed in enumerate(ens.seeds):
        losses, model = alone(task, seed, 5)
        torch.testing.assert_close(ens.losses[k], losses, **TOL64)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(ens.model(k).state_dict()[name], value, **TOL64,
                                       msg=name)


def test_lstm_ensemble_is_close_to_its_seeds_alone_in_float32():
    task = gs.make_task("adding", seq_len=8)
    ens = ensemble(task, [1, 4], dtype=torch.float32, optimizer="sgd").train(5)
    for k, seed in enumerate(ens.seeds):
        losses, _ = alone(task, seed, 5, dtype=torch.float32, optimizer="sgd")
        torch.testing.assert_close(ens.losses[k], losses, **TOL32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_diverging_lstm_seed_leaves_its_siblings_alone(dtype):
    task = gs.make_task("adding", seq_len=8)
    ens = ensemble(task, [0, 1, 2], dtype=dtype)
    with torch.no_grad():
        ens.stacked_parameters["cell.weight_hh"][1] = torch.nan
    ens.train(6)
    assert ens.diverged_at == [None, 0, None]
    assert torch.isnan(ens.losses[1]).all()
    tol = TOL64 if dtype == torch.float64 else TOL32
    for k in (0, 2):
        torch.testing.assert_close(ens.losses[k], ensemble(task, [k], dtype).train(6).losses[0],
                                   **tol)


class GatedLSTM(LSTMCell):
    """A subclass: it may change the step, so the fused path must not assume it does not."""


def test_only_plain_lstms_take_the_fused_path(monkeypatch):
    """The LSTM ensemble goes through ``fused_lstm_states`` (automatically, no switch);
    a projected LSTM, an LSTM subclass and the other cells keep the step-by-step path."""
    calls = []
    original = forward_module.fused_lstm_states

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(forward_module, "fused_lstm_states", spy)
    task = gs.make_task("adding", seq_len=8)
    ensemble(task, [0, 1]).train(1)
    assert calls, "the LSTM ensemble did not use the fused recurrence"
    calls.clear()
    ensemble(task, [0, 1], proj_size=2).train(1)
    ensemble(task, [0, 1], cell="gru").train(1)
    subclass = EnsembleTrainer(lambda: gs.SequenceModel(GatedLSTM(2, 5)), [0, 1], task,
                               batch_size=4, dtype=torch.float64).train(1)
    assert subclass.mode == "batched" and not calls
    assert fused_lstm.fused_lstm_applies(LSTMCell(2, 3))
    assert not fused_lstm.fused_lstm_applies(LSTMCell(2, 3, proj_size=2))
    assert not fused_lstm.fused_lstm_applies(GatedLSTM(2, 3))
