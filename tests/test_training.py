"""Seed-ensemble training: equivalence with seeds trained alone, divergence isolation,
checkpoints and resume, and a smoke test of every task with every cell."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import CELLS

import gatescope as gs
from gatescope.training import (
    DATA_STREAM,
    EnsembleTrainer,
    derive_seed,
    list_optimizers,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
    stream_generator,
    task_model_factory,
    train_resumable,
)

SEEDS = (3, 0, 7, 1)
STEPS = 12
TOL = dict(rtol=1e-10, atol=1e-10)


def small_task():
    return gs.make_task("adding", seq_len=8, input_size=3)


def factory(task, cell="multi_gate"):
    return task_model_factory(task, cell, 5, bias=True)


def trainer(seeds, optimizer="sgd", mode="auto", cell="multi_gate", lr=0.05, task=None):
    task = task or small_task()
    return EnsembleTrainer(factory(task, cell), seeds, task, optimizer=optimizer, lr=lr,
                           batch_size=4, dtype=torch.float64, mode=mode)


def plain_loop(seed, optimizer, lr, cell="multi_gate", steps=STEPS):
    """Seed ``seed`` trained by hand: no ensemble code at all."""
    task = small_task()
    torch.manual_seed(seed)
    model = factory(task, cell)().double()
    opt = make_optimizer(optimizer, model.parameters(), lr)
    gen = torch.Generator().manual_seed(derive_seed(seed, DATA_STREAM))
    losses = []
    for _ in range(steps):
        u, y = task.sample(4, gen, dtype=torch.float64)
        loss = model.loss(u, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64), model


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], **TOL, msg=name)


@pytest.mark.parametrize("mode", ["batched", "vmap"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_seed_in_ensemble_equals_seed_alone(optimizer, mode):
    ens = trainer(SEEDS, optimizer, mode).train(STEPS)
    assert ens.mode == mode and ens.losses.shape == (len(SEEDS), STEPS)
    for k, seed in enumerate(SEEDS):
        alone = trainer([seed], optimizer, mode).train(STEPS)
        torch.testing.assert_close(ens.losses[k], alone.losses[0], **TOL)
        assert_same_parameters(ens.model(k), alone.model(0))
        by_hand, model = plain_loop(seed, optimizer, 0.05)
        torch.testing.assert_close(ens.losses[k], by_hand, **TOL)
        assert_same_parameters(ens.model(k), model)


@pytest.mark.parametrize("optimizer", [o for o in list_optimizers() if o not in ("sgd", "adam")])
def test_other_optimizers_match_the_plain_loop(optimizer):
    ens = trainer(SEEDS[:2], optimizer, lr=0.01).train(6)
    for k, seed in enumerate(SEEDS[:2]):
        by_hand, model = plain_loop(seed, optimizer, 0.01, steps=6)
        torch.testing.assert_close(ens.losses[k], by_hand, **TOL)
        assert_same_parameters(ens.model(k), model)


@pytest.mark.parametrize("cell", ["lstm", "gru", "leaky"])
def test_batched_mode_runs_every_builtin_cell(cell):
    ens = trainer(SEEDS[:2], "adam", cell=cell).train(4)
    assert ens.mode == "batched"
    by_hand, model = plain_loop(SEEDS[1], "adam", 0.05, cell=cell, steps=4)
    torch.testing.assert_close(ens.losses[1], by_hand, **TOL)
    assert_same_parameters(ens.model(1), model)


class ScaledCell(gs.RecurrentCell):
    """A user cell whose parameter ``scale`` is used elementwise, outside ``F.linear``."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.linear = torch.nn.Linear(input_size + hidden_size, hidden_size)
        self.scale = torch.nn.Parameter(torch.rand(hidden_size))

    def compute(self, h, u, held=None):
        state = self.scale * torch.tanh(self.linear(torch.cat([h, u], -1)))
        return {"state": state, "held": (), "gate": None, "retention": torch.zeros_like(h)}


def test_auto_mode_falls_back_to_vmap_for_other_parameter_uses():
    task = small_task()

    def build():
        return gs.SequenceModel(ScaledCell(3, 4))

    def run(seeds):
        return EnsembleTrainer(build, seeds, task, optimizer="adam", lr=0.05, batch_size=4,
                               dtype=torch.float64).train(5)

    ens = run([0, 1])
    assert ens.mode == "vmap"
    torch.testing.assert_close(ens.losses[1], run([1]).losses[0], **TOL)
    with pytest.raises(ValueError, match="batched"):
        EnsembleTrainer(build, [0], task, mode="batched")


def test_a_diverging_seed_is_frozen_and_its_siblings_go_on():
    ens = trainer([0, 1, 2], "adam")
    with torch.no_grad():
        ens.stacked_parameters["readout.weight"][1] = torch.nan
    poisoned = ens.model(1).state_dict()
    ens.train(STEPS)
    assert ens.diverged_at == [None, 0, None]
    assert ens.alive.tolist() == [True, False, True]
    assert torch.isnan(ens.losses[1]).all() and torch.isfinite(ens.losses[[0, 2]]).all()
    for name, value in ens.model(1).state_dict().items():  # frozen where it diverged
        torch.testing.assert_close(value, poisoned[name], equal_nan=True, rtol=0, atol=0)
    for k in (0, 2):
        alone = trainer([k], "adam").train(STEPS)
        torch.testing.assert_close(ens.losses[k], alone.losses[0], **TOL)
        assert_same_parameters(ens.model(k), alone.model(0))


def test_huge_learning_rate_diverges_without_raising():
    ens = trainer([0, 1], "sgd", lr=1e6).train(40)
    assert all(step is not None and 0 <= step < 40 for step in ens.diverged_at)
    assert torch.isnan(ens.losses[:, -1]).all()
    assert all(torch.isfinite(p).all() for p in ens.stacked_parameters.values())


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    def measure(t):
        return [{"seed": s, "step": t.steps_done, "value": v}
                for s, v in zip(t.seeds, t.losses_on(held_out).tolist(), strict=True)]

    held_out = trainer([5, 6]).sample_batch([stream_generator(s, "eval") for s in (5, 6)], 3)
    whole = trainer([5, 6], "adam")
    rows_whole = train_resumable(whole, 10, [0, 4, 7], tmp_path / "a", measure)

    first = trainer([5, 6], "adam")
    first.train(4, [0, 4], lambda t: save_checkpoint(tmp_path / "b" / "step-00000004.pt", t,
                                                     {"rows": []}))
    second = trainer([5, 6], "adam")
    assert load_checkpoint(tmp_path / "b" / "step-00000004.pt", second) == {"rows": []}
    assert second.steps_done == 4 and second.last_checkpoint == 4
    second.train(10)
    torch.testing.assert_close(second.losses, whole.losses, rtol=0, atol=0)
    for name, p in whole.stacked_parameters.items():
        torch.testing.assert_close(second.stacked_parameters[name], p, rtol=0, atol=0)

    # train_resumable stopped after the step-4 checkpoint, then run again on its folder
    resumed_dir = tmp_path / "c"
    train_resumable(trainer([5, 6], "adam"), 4, [0, 4], resumed_dir, measure)
    again = trainer([5, 6], "adam")
    rows_again = train_resumable(again, 10, [0, 4, 7], resumed_dir, measure)
    assert rows_again == rows_whole and [r["step"] for r in rows_whole[::2]] == [0, 4, 7, 10]
    torch.testing.assert_close(again.losses, whole.losses, rtol=0, atol=0)


def test_checkpoints_refuse_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (pytest.fail, ("unpickling ran code",))

    path.write_bytes(pickle.dumps({"trainer": Payload()}, protocol=2))
    with pytest.raises(ValueError, match="cannot restore checkpoint"):
        load_checkpoint(path, trainer([0]))


def test_checkpoint_of_other_seeds_is_rejected(tmp_path):
    save_checkpoint(tmp_path / "x.pt", trainer([0, 1]))
    with pytest.raises(ValueError, match="seeds"):
        load_checkpoint(tmp_path / "x.pt", trainer([0, 2]))


def test_argument_checks():
    task = small_task()
    with pytest.raises(ValueError, match="distinct"):
        EnsembleTrainer(factory(task), [1, 1], task)
    with pytest.raises(ValueError, match="unknown optimizer"):
        EnsembleTrainer(factory(task), [1], task, optimizer="lbfgs")
    with pytest.raises(ValueError, match="> 0"):
        EnsembleTrainer(factory(task), [1], task, lr=-1.0)
    with pytest.raises(ValueError, match="checkpoints"):
        trainer([0]).train(3, checkpoints=[5])


@pytest.mark.parametrize("task_name", gs.list_tasks())
def test_every_task_trains_with_every_cell(task_name):
    info = next(i for i in gs.describe_tasks() if i.name == task_name)
    task = gs.make_task(task_name, seq_len=max(6, info.min_seq_len))
    for cell in CELLS:
        ens = EnsembleTrainer(task_model_factory(task, cell, 4), [0, 1], task,
                              optimizer="adam", lr=1e-2, batch_size=3)
        before = {k: v.detach().clone() for k, v in ens.stacked_parameters.items()}
        ens.train(3)
        assert ens.mode == "batched", cell
        assert ens.losses.shape == (2, 3) and torch.isfinite(ens.losses).all(), cell
        assert ens.diverged_at == [None, None], cell
        assert any(not torch.equal(before[k], v) for k, v in ens.stacked_parameters.items())


def test_fixed_batch_trains_every_step_on_the_streams_first_batch():
    fresh, fixed = trainer([3, 4]), trainer([3, 4])
    fixed_batch = EnsembleTrainer(factory(small_task()), [3, 4], small_task(), optimizer="sgd",
                                  lr=0.05, batch_size=4, dtype=torch.float64, fixed_batch=True)
    first = fresh.sample_batch()
    for got, want in zip(fixed_batch.fixed_batch[:2], first[:2], strict=True):
        torch.testing.assert_close(got, want, **TOL)
    assert fixed.fixed_batch is None
    for _ in range(3):
        expected = fixed_batch.losses_on(fixed_batch.fixed_batch)
        torch.testing.assert_close(fixed_batch.step(), expected, **TOL)


# ----------------------------------------------------------------------------- seeds_per_pass

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_seeds_per_pass_gives_the_same_training(dtype):
    """Passes over chunks of seeds (2 + 1 here) give the same losses and parameters as one
    pass over all seeds, a diverging seed included."""
    task = gs.make_task("adding", seq_len=8)

    def trained(seeds_per_pass):
        ens = EnsembleTrainer(task_model_factory(task, "lstm", 5), [0, 1, 2], task,
                              optimizer="adam", lr=0.05, batch_size=4, dtype=dtype,
                              seeds_per_pass=seeds_per_pass)
        with torch.no_grad():
            ens.stacked_parameters["cell.weight_hh"][2] = torch.nan
        return ens.train(4)

    whole, chunked = trained(None), trained(2)
    assert chunked.diverged_at == whole.diverged_at == [None, None, 0]
    torch.testing.assert_close(chunked.losses, whole.losses, rtol=0, atol=0, equal_nan=True)
    for name, value in whole.stacked_parameters.items():
        torch.testing.assert_close(chunked.stacked_parameters[name], value, rtol=0, atol=0,
                                   equal_nan=True, msg=name)


def test_seeds_per_pass_in_vmap_mode():
    """A model the batched mode cannot run (the LRU) trains by vmap, chunked the same way."""
    task = gs.make_task("adding", seq_len=8)
    factory = task_model_factory(task, "lru", 5)
    whole, chunked = (EnsembleTrainer(factory, [0, 1, 2], task, batch_size=4,
                                      dtype=torch.float64, seeds_per_pass=k).train(3)
                      for k in (None, 2))
    assert whole.mode == chunked.mode == "vmap"
    torch.testing.assert_close(chunked.losses, whole.losses, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_seeds_per_pass_is_refused(bad):
    task = gs.make_task("adding", seq_len=8)
    with pytest.raises(ValueError, match="seeds_per_pass must be a positive integer"):
        EnsembleTrainer(task_model_factory(task, "lstm", 5), [0, 1], task,
                        seeds_per_pass=bad)
