"""The task registry: determinism, shapes, definitions, baselines and argument checks."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from gatescope.tasks import (
    MC_SAMPLES,
    MC_SEED,
    Task,
    TaskInfo,
    describe_tasks,
    list_tasks,
    make_task,
    precomputed,
    register_task,
    task_class,
)

PAPER_TASKS = [
    "adding", "adding_classic", "recall", "copy", "sinmix", "short", "movingavg", "delaysum",
    "narma10", "narma20", "ar2", "ar2_driven", "multilag",
]  # fmt: skip

# (name, seq_len, input_size): small but valid settings that keep the tests fast.
CASES = {
    "adding": (20, 3),
    "adding_classic": (20, 2),
    "recall": (30, 3),
    "copy": (5, 10),
    "sinmix": (16, 4),
    "short": (10, 2),
    "movingavg": (10, 2),
    "delaysum": (37, 2),
    "narma10": (40, 2),
    "narma20": (40, 2),
    "ar2": (30, 2),
    "ar2_driven": (30, 2),
    "multilag": (41, 2),
}

TEST_SEED = 4242
assert TEST_SEED != MC_SEED  # Monte Carlo checks must not reuse the baseline's own draws


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(name: str) -> Task:
    seq_len, m = CASES[name]
    return make_task(name, seq_len, m)


# --------------------------------------------------------------------------- registry


def test_list_tasks_is_the_papers_list_in_order():
    assert list_tasks()[: len(PAPER_TASKS)] == PAPER_TASKS
    assert set(CASES) == set(PAPER_TASKS)


def test_describe_tasks_gives_one_row_per_task():
    rows = describe_tasks()
    assert [r.name for r in rows] == list_tasks()
    by_name = {r.name: r for r in rows}
    for row in rows:
        assert isinstance(row, TaskInfo)
        assert row.loss in ("mse", "cross_entropy")
        assert row.readout in ("last", "all")
        assert row.baseline in ("analytic", "monte_carlo")
        assert row.description and row.source
        assert row.options == task_class(row.name).option_defaults()
        # the default options are valid at min_seq_len, and not one step below
        make_task(row.name, row.min_seq_len)
        if row.min_seq_len > 1:
            with pytest.raises(ValueError, match="seq_len"):
                make_task(row.name, row.min_seq_len - 1)
    assert by_name["copy"].input_size == "== 10"
    assert by_name["copy"].loss == "cross_entropy" and by_name["copy"].has_mask
    assert by_name["adding"].input_size == ">= 2"
    assert by_name["adding_classic"].input_size == "== 2"
    assert by_name["delaysum"].min_seq_len == 37
    assert by_name["movingavg"].min_seq_len == 8
    assert by_name["narma10"].min_seq_len == 10
    assert by_name["narma20"].min_seq_len == 20
    assert by_name["recall"].min_seq_len == 15
    assert by_name["multilag"].options["lags"] == (5, 20, 40)
    assert by_name["narma10"].baseline == "monte_carlo"
    assert by_name["adding"].baseline == "analytic"


def test_make_task_returns_the_registered_class_with_its_metadata():
    task = make_task("adding", seq_len=80, input_size=4)
    assert type(task) is task_class("adding")
    assert (task.name, task.seq_len, task.input_size) == ("adding", 80, 4)
    assert (task.loss, task.readout, task.output_size) == ("mse", "last", 1)
    assert task.total_len == 80
    assert make_task("copy", 30).input_size == 10  # None -> the fixed size
    assert make_task("adding", 30).input_size == 2  # None -> the smallest allowed
    assert make_task("copy", 30).total_len == 50


def test_register_task_makes_a_custom_task_available():

    @register_task("toy_scale")
    class ToyScale(Task):  # not decorated: register_task makes it a frozen dataclass
        gain: float = 2.0

        def _generate(self, batch, generator):
            u = torch.rand(batch, self.seq_len, self.input_size, generator=generator,
                           dtype=torch.float64)  # fmt: skip
            return u, self.gain * u[:, -1, :1]

    assert "toy_scale" in list_tasks()
    task = make_task("toy_scale", 5, 1, gain=3.0)
    assert task.gain == 3.0 and task.options == {"gain": 3.0}
    u, y = task.sample(4, gen(0))
    torch.testing.assert_close(y, 3.0 * u[:, -1, :1])
    # generic Monte Carlo baseline: Var(3 U) = 9/12
    assert task.baseline_kind == "monte_carlo"
    assert task.baseline_loss == pytest.approx(0.75, rel=0.02)
    assert task.best_loss is None
    with pytest.raises(TypeError):
        register_task("bad")(int)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_same_seed_same_batch_other_seed_other_batch(name):
    task = build(name)
    first, again, other = (task.sample(8, gen(s)) for s in (1, 1, 2))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    # a generator advances: two draws from one generator differ
    g = gen(1)
    assert not torch.equal(task.sample(8, g)[0], task.sample(8, g)[0])


@pytest.mark.parametrize("name", PAPER_TASKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(name, dtype):
    task = build(name)
    out = task.sample(5, gen(3), dtype=dtype)
    assert len(out) == (3 if task.has_mask else 2)
    u, y = out[0], out[1]
    assert u.shape == (5, task.total_len, task.input_size) and u.dtype == dtype
    assert u.device.type == "cpu"
    if task.loss == "mse":
        assert task.readout == "last"
        assert y.shape == (5, 1) and y.dtype == dtype
    else:
        assert task.readout == "all"
        assert y.shape == (5, task.total_len) and y.dtype == torch.long
        assert int(y.min()) >= 0 and int(y.max()) < task.output_size
        assert out[2].shape == y.shape and out[2].dtype == torch.bool
    assert torch.isfinite(u).all()
    assert torch.isfinite(y.double()).all()


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_float32_batch_is_the_float64_batch_rounded(name):
    task = build(name)
    lo = task.sample(6, gen(5), dtype=torch.float32)
    hi = task.sample(6, gen(5), dtype=torch.float64)
    assert torch.equal(lo[0], hi[0].float())
    assert torch.equal(lo[1], hi[1].to(lo[1].dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", PAPER_TASKS)
def test_same_batch_on_every_device(name):
    task = build(name)
    cpu = task.sample(6, gen(9))
    cuda = task.sample(6, gen(9), device="cuda")
    for a, b in zip(cpu, cuda, strict=True):
        assert b.device.type == "cuda"
        assert torch.equal(a, b.cpu())


def test_sample_without_generator_uses_the_global_one():
    task = build("adding")
    torch.manual_seed(11)
    a = task.sample(4)
    torch.manual_seed(11)
    b = task.sample(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --------------------------------------------------------------------------- baselines


def mean_predictor_loss(task: Task, n: int, seed: int) -> float:
    """Loss of the best input-independent predictor, estimated on ``n`` fresh samples."""
    g = gen(seed)
    chunks = [task.sample(n // 4, g, dtype=torch.float64) for _ in range(4)]
    y = torch.cat([c[1] for c in chunks])
    if task.loss == "mse":
        return float(((y - y.mean(0)) ** 2).mean())
    mask = torch.cat([c[2] for c in chunks])
    total, nll = 0, 0.0
    for t in range(y.shape[1]):  # per-step class frequencies: the best memoryless predictor
        counted = y[mask[:, t], t]
        if counted.numel():
            p = torch.bincount(counted, minlength=task.output_size).double() / counted.numel()
            nll -= float(torch.log(p[counted]).sum())
            total += counted.numel()
    return nll / total


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_baseline_loss_matches_monte_carlo(name):
    task = build(name)
    estimate = mean_predictor_loss(task, 100_000, TEST_SEED)
    assert estimate == pytest.approx(task.baseline_loss, rel=0.03)


def test_analytic_baselines_have_the_documented_values():
    assert make_task("adding", 80, 4).baseline_loss == pytest.approx(1 / 6)
    assert make_task("adding_classic", 80).baseline_loss == pytest.approx(1 / 6)
    assert make_task("recall", 80, 4).baseline_loss == pytest.approx(5 / 12)
    assert make_task("copy", 100).baseline_loss == pytest.approx(10 * math.log(8) / 120)
    assert make_task("copy", 100, scored="recall").baseline_loss == pytest.approx(math.log(8))
    assert make_task("short", 80).baseline_loss == pytest.approx(0.5)
    assert make_task("movingavg", 80).baseline_loss == pytest.approx(1 / 96)
    assert make_task("delaysum", 80).baseline_loss == pytest.approx(1 / 48)
    # stationary AR(2) variance: σ² (1 - a2) / ((1 + a2) ((1 - a2)² - a1²))
    stationary = 0.05**2 * 1.7 / (0.3 * (1.7**2 - 1.6**2))
    assert make_task("ar2", 400).baseline_loss == pytest.approx(stationary, rel=1e-9)
    assert make_task("ar2_driven", 400).baseline_loss == pytest.approx(stationary, rel=1e-9)
    task = make_task("multilag", 50)
    assert task.baseline_loss == pytest.approx(1 + 0.25 + 0.0625 + 0.01)
    assert task.best_loss == pytest.approx(0.01)


def test_best_losses():
    assert make_task("adding", 20).best_loss == 0.0
    assert make_task("ar2_driven", 20).best_loss == 0.0
    ar2 = make_task("ar2", 20)
    assert ar2.best_loss == ar2.baseline_loss


def test_monte_carlo_baseline_is_deterministic_and_cached():
    a = make_task("sinmix", 12, 2)
    b = make_task("sinmix", 12, 2)
    assert a.baseline_kind == "monte_carlo"
    assert a.baseline_loss == b.baseline_loss  # same fixed seed; cached for equal tasks
    assert make_task("sinmix", 12, 2, noise_std=0.2).baseline_loss == pytest.approx(
        a.baseline_loss, rel=1e-12
    )  # distractors do not touch the target, and the draws are the same


@pytest.mark.parametrize("key", sorted(precomputed.MONTE_CARLO_BASELINES))
def test_precomputed_baselines_are_what_monte_carlo_gives(key):
    """Each stored baseline is recomputed here (same MC_SAMPLES, MC_SEED): the table behind a
    fast ``gatescope list`` cannot drift from the tasks' code. (rel 1e-12, not ==, only so
    that another CPU's last-bit rounding of float64 sums is no failure.)"""
    assert (precomputed.TABLE_SAMPLES, precomputed.TABLE_SEED) == (MC_SAMPLES, MC_SEED)
    path, seq_len, input_size, options = key
    module, _, name = path.rpartition(".")
    task = getattr(importlib.import_module(module), name)(seq_len, input_size, **dict(options))
    assert precomputed.table_key(task) == key
    assert task._monte_carlo_baseline() == pytest.approx(
        precomputed.MONTE_CARLO_BASELINES[key], rel=1e-12, abs=0)


def test_gatescope_list_computes_no_monte_carlo_baseline(monkeypatch, capsys):
    """Defect 12: ``gatescope list`` took 19 s computing the Monte Carlo baselines; it now
    reads them from the table, showing the same values."""
    from gatescope import cli
    from gatescope.tasks import base

    def refuse(task):
        raise AssertionError(f"{task.name}: Monte Carlo baseline computed for the listing")

    monkeypatch.setattr(base, "_BASELINE_CACHE", {})
    monkeypatch.setattr(base.Task, "_monte_carlo_baseline", refuse)
    assert cli.main(["list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("  ") and line.split()[0] in PAPER_TASKS}
    assert "0.25385" in rows["sinmix"]  # the values shown before the table, unchanged
    assert "0.012026" in rows["narma10"]
    assert "0.0048797" in rows["narma20"]


def test_the_table_is_skipped_for_other_tasks_and_other_sample_counts(monkeypatch):
    """A task that differs from an entry (options, sizes, a re-registered class) or another
    MC_SAMPLES computes its own estimate."""
    from gatescope.tasks import base

    listed = make_task("sinmix", 80)
    assert precomputed.lookup(listed, MC_SAMPLES, MC_SEED) is not None
    assert precomputed.lookup(listed, 1000, MC_SEED) is None
    assert precomputed.lookup(make_task("sinmix", 80, noise_std=0.2), MC_SAMPLES, MC_SEED) is None
    assert precomputed.lookup(make_task("sinmix", 81), MC_SAMPLES, MC_SEED) is None

    class Mine(task_class("sinmix")):
        pass

    assert precomputed.lookup(Mine(80), MC_SAMPLES, MC_SEED) is None
    monkeypatch.setattr(base, "_BASELINE_CACHE", {})
    monkeypatch.setattr(base, "MC_SAMPLES", 2_000)
    assert make_task("sinmix", 80).baseline_loss != precomputed.MONTE_CARLO_BASELINES[
        precomputed.table_key(listed)]


# --------------------------------------------------------------------------- definitions


def test_adding_target_is_the_sum_of_the_two_marked_values():
    task = make_task("adding", seq_len=6, input_size=3)
    u, y = task.sample(50, gen(0), dtype=torch.float64)
    for b in range(u.shape[0]):
        marked = torch.nonzero(u[b, :, -1]).flatten().tolist()
        assert len(marked) == 2
        first, second = marked
        assert 0 <= first < 3 <= second < 6  # one marker per half
        assert set(u[b, :, -1].tolist()) == {0.0, 1.0}
        assert y[b, 0].item() == pytest.approx(u[b, first, 0].item() + u[b, second, 0].item())
    # the value channels are U(0,1) and independent of the markers
    assert ((u[..., :2] >= 0) & (u[..., :2] < 1)).all()
    # a hand-checked example: values 0.1..0.6 on channel 0, markers at steps 1 and 4
    ex = torch.zeros(1, 6, 3, dtype=torch.float64)
    ex[0, :, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float64)
    ex[0, [1, 4], -1] = 1.0
    assert float((ex[..., 0] * ex[..., -1]).sum()) == pytest.approx(0.2 + 0.5)


def test_adding_classic_is_two_channel_adding():
    u, y = make_task("adding_classic", 10).sample(20, gen(1), dtype=torch.float64)
    assert u.shape[-1] == 2
    assert (u[..., 1].sum(1) == 2).all()
    torch.testing.assert_close(y[:, 0], (u[..., 0] * u[..., 1]).sum(1))


def test_recall_marks_five_distinct_steps_in_the_first_third():
    task = make_task("recall", 30, 2)
    u, y = task.sample(64, gen(2), dtype=torch.float64)
    marks = u[..., -1]
    assert (marks.sum(1) == 5).all()
    assert (marks[:, 10:] == 0).all()  # window max(3, 30 // 3) = 10
    torch.testing.assert_close(y[:, 0], (u[..., 0] * marks).sum(1))


def test_copy_layout():
    T = 7
    u, y, mask = make_task("copy", T).sample(16, gen(3))
    tokens = u.argmax(-1)
    assert torch.equal(u.sum(-1), torch.ones(16, T + 20))  # one-hot
    symbols = tokens[:, :10]
    assert ((symbols >= 1) & (symbols <= 8)).all()
    assert (tokens[:, 10 : T + 9] == 0).all()  # T - 1 blanks
    assert (tokens[:, T + 9] == 9).all()  # the delimiter
    assert (tokens[:, T + 10 :] == 0).all()  # 10 blanks
    assert (y[:, : T + 10] == 0).all() and torch.equal(y[:, T + 10 :], symbols)
    assert mask.all()
    _, _, recall_mask = make_task("copy", T, scored="recall").sample(4, gen(3))
    assert not recall_mask[:, : T + 10].any() and recall_mask[:, T + 10 :].all()


def test_short_movingavg_delaysum_targets():
    u, y = make_task("short", 12, 3).sample(8, gen(4), dtype=torch.float64)
    torch.testing.assert_close(y[:, 0], u[:, 6:, 0].sum(1))
    assert (u[..., 1:] > 0).any()  # distractor channels are filled

    u, y = make_task("movingavg", 12, 3).sample(8, gen(4), dtype=torch.float64)
    torch.testing.assert_close(y[:, 0], u[:, 4:, 0].mean(1))
    assert (u[..., 1:] == 0).all()

    u, y = make_task("delaysum", 40, 2).sample(8, gen(4), dtype=torch.float64)
    steps = [39 - d for d in (4, 12, 24, 36)]
    torch.testing.assert_close(y[:, 0], u[:, steps, 0].mean(1))
    assert (u[..., 1:] == 0).all()


def test_sinmix_target():
    T = 20
    u, y = make_task("sinmix", T, 3).sample(8, gen(5), dtype=torch.float64)
    q = T // 4
    early, late = u[:, :q, :2].mean(1), u[:, -q:, :2].mean(1)
    expected = (late[:, 0] - early[:, 0]) + (early[:, 1] - late[:, 1])
    torch.testing.assert_close(y[:, 0], expected)
    assert u[..., :2].abs().max() <= 1.0


def naive_narma(u0, order, a, b, c, saturate):
    """The recurrence written out with plain Python floats."""
    y = [0.0]
    for t in range(len(u0)):
        window = sum(y[max(0, t - order + 1) : t + 1])
        lagged = u0[t - order + 1] if t >= order - 1 else 0.0
        v = a * y[t] + b * y[t] * window + 1.5 * lagged * u0[t] + c
        y.append(math.tanh(v) if saturate else v)
    return y[-1]


@pytest.mark.parametrize(
    ("name", "order", "coef", "saturate"),
    [("narma10", 10, (0.3, 0.05, 0.1), False), ("narma20", 20, (0.1, 0.04, 0.2), True)],
)
def test_narma_follows_its_recurrence(name, order, coef, saturate):
    u, y = make_task(name, 45, 2).sample(4, gen(6), dtype=torch.float64)
    assert (u[..., 1:] == 0).all() and (u[..., 0] >= 0).all() and (u[..., 0] < 0.5).all()
    for row in range(4):
        expected = naive_narma(u[row, :, 0].tolist(), order, *coef, saturate)
        assert y[row, 0].item() == pytest.approx(expected, rel=1e-12)


def test_unsaturated_narma20_fails_loudly_where_it_diverges():
    task = make_task("narma20", 120, saturate=False)
    with pytest.raises(RuntimeError, match="saturate=True"):
        task.sample(256, gen(7))
    u, y = make_task("narma20", 120).sample(256, gen(7))  # the saturated default is fine
    assert y.abs().max() < 1


def test_ar2_driven_follows_its_recurrence_and_ar2_ignores_the_inputs():
    T = 25
    u, y = make_task("ar2_driven", T, 2).sample(4, gen(8), dtype=torch.float64)
    for row in range(4):
        x_prev, x = 0.0, 0.0
        for t in range(T):
            eps = 0.05 * math.sqrt(12) * (u[row, t, 0].item() - 0.5)
            x_prev, x = x, 1.6 * x - 0.7 * x_prev + eps
        assert y[row, 0].item() == pytest.approx(x, rel=1e-10)
    # ar2: same inputs' law, but the target is independent of them
    u, y = make_task("ar2", T, 1).sample(20_000, gen(8), dtype=torch.float64)
    corr = torch.corrcoef(torch.stack([u[:, -1, 0], y[:, 0]]))[0, 1]
    assert abs(float(corr)) < 0.05


def test_multilag_target():
    task = make_task("multilag", 45, 3, noise_std=0.0, direction=(1.0, 0.0, 0.0))
    u, y = task.sample(8, gen(9), dtype=torch.float64)
    expected = 1.0 * u[:, 39, 0] + 0.5 * u[:, 24, 0] + 0.25 * u[:, 4, 0]
    torch.testing.assert_close(y[:, 0], expected)
    assert task.direction == (1.0, 0.0, 0.0)
    # default direction: the unit vector (1, ..., 1)/sqrt(m)
    task = make_task("multilag", 41, 4, lags=(0,), coefficients=(1.0,), noise_std=0.0)
    u, y = task.sample(8, gen(9), dtype=torch.float64)
    torch.testing.assert_close(y[:, 0], u[:, -1].sum(-1) / 2)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("name", "seq_len", "input_size", "options", "argument"),
    [
        ("adding", 1, 2, {}, "seq_len"),
        ("adding", 0, 2, {}, "seq_len"),
        ("adding", 2.5, 2, {}, "seq_len"),
        ("adding", True, 2, {}, "seq_len"),
        ("adding", 10, 1, {}, "input_size"),
        ("adding_classic", 10, 3, {}, "input_size"),
        ("recall", 14, 2, {}, "seq_len"),
        ("recall", 30, 2, {"n_markers": 0}, "n_markers"),
        ("copy", 10, 6, {}, "input_size"),
        ("copy", 0, 10, {}, "seq_len"),
        ("copy", 10, 10, {"scored": "some"}, "scored"),
        ("sinmix", 3, 2, {}, "seq_len"),
        ("sinmix", 10, 1, {}, "input_size"),
        ("sinmix", 10, 2, {"noise_std": -1.0}, "noise_std"),
        ("short", 5, 1, {}, "seq_len"),
        ("movingavg", 7, 1, {}, "seq_len"),
        ("movingavg", 10, 1, {"window": 0}, "window"),
        ("delaysum", 36, 1, {}, "seq_len"),
        ("delaysum", 50, 1, {"delays": (4, 4)}, "delays"),
        ("delaysum", 50, 1, {"delays": (-1, 4)}, "delays"),
        ("delaysum", 50, 1, {"delays": ()}, "delays"),
        ("narma10", 9, 1, {}, "seq_len"),
        ("narma20", 19, 1, {}, "seq_len"),
        ("narma10", 20, 1, {"saturate": "yes"}, "saturate"),
        ("ar2", 1, 1, {}, "seq_len"),
        ("ar2", 10, 1, {"a1": 2.0, "a2": 0.0}, "a1, a2"),
        ("ar2_driven", 10, 1, {"noise_std": 0.0}, "noise_std"),
        ("ar2", 10, 0, {}, "input_size"),
        ("multilag", 40, 1, {}, "seq_len"),
        ("multilag", 50, 1, {"coefficients": (1.0, 2.0)}, "coefficients"),
        ("multilag", 50, 2, {"direction": (1.0,)}, "direction"),
        ("multilag", 50, 2, {"direction": (0.0, 0.0)}, "direction"),
        ("multilag", 50, 2, {"lags": "5"}, "lags"),
    ],
)
def test_bad_arguments_name_the_argument(name, seq_len, input_size, options, argument):
    with pytest.raises(ValueError, match=f"{name}.*{argument}") as info:
        make_task(name, seq_len, input_size, **options)
    assert "must" in str(info.value)


def test_unknown_task_lists_the_choices():
    with pytest.raises(ValueError, match="unknown task 'nope'") as info:
        make_task("nope", 10, 2)
    for name in PAPER_TASKS:
        assert name in str(info.value)


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['lag'\].*delays"):
        make_task("delaysum", 40, 1, lag=3)
    with pytest.raises(ValueError, match="takes no options"):
        make_task("adding", 40, 2, window=3)


def test_sample_checks_its_arguments():
    task = build("adding")
    with pytest.raises(ValueError, match="batch"):
        task.sample(0)
    with pytest.raises(ValueError, match="generator"):
        task.sample(2, generator=1234)
    with pytest.raises(ValueError, match="dtype"):
        task.sample(2, dtype=torch.long)


def test_tasks_are_frozen_and_hashable():
    task = make_task("delaysum", 40, 1, delays=[4, 8])
    assert task.delays == (4, 8)  # normalised to a tuple
    assert task == make_task("delaysum", 40, 1, delays=(4, 8))
    assert hash(task) == hash(make_task("delaysum", 40, 1, delays=(4, 8)))
    with pytest.raises(AttributeError):
        task.seq_len = 50
