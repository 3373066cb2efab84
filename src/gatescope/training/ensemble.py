"""``EnsembleTrainer``: train E seeds of one configuration in one pass.

The E models' parameters are stacked along a leading dimension (``{name: (E, *shape)}``,
via ``torch.func.stack_module_state``) and every step computes all E losses at once (see
:mod:`gatescope.training.forward`), backpropagates their sum (the seeds share no
parameter, so seed ``k`` 's slice of the gradient is exactly the gradient of its own loss),
and applies one elementwise ``torch.optim`` optimizer to the stacked tensors. Each seed has
its own initialisation and its own data stream (:mod:`gatescope.training.seeding`), so
seed ``k`` trained in an ensemble follows the same trajectory as seed ``k`` trained alone
(equal up to floating-point rounding of batched products).

Gradient clipping (``clip_norm``) acts per seed: seed ``k``'s gradient is rescaled by its own
norm over all its parameters, as ``torch.nn.utils.clip_grad_norm_`` on seed ``k`` alone
would, never by the norm of the stacked gradient. An optional :class:`~gatescope.training.
forcing.StableForcing` perturbs the update of chosen parameters after every step, per seed
from the seed's own stream ``"forcing"``.

A seed whose loss or gradient stops being finite is *diverged*: its gradient is zeroed, its
parameters are frozen at their last finite values, its later losses are recorded as NaN,
and the step is kept in :attr:`EnsembleTrainer.diverged_at` (so is a seed whose forced
parameters stop being finite: it is frozen at its parameters before that step). The other
seeds never see it.
No step synchronises with the device, so the trainer runs asynchronously on CUDA.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import stack_module_state

from ..tasks import Task
from .forcing import FORCING_STREAM, StableForcing
from .forward import ensemble_loss
from .optimizers import make_optimizer
from .seeding import DATA_STREAM, seeded_init, stream_generator

#: Version of the :meth:`EnsembleTrainer.state_dict` layout.
STATE_FORMAT = 1

#: A stacked batch ``(u, y, mask)``: ``u (E, B, T, m)``, ``y (E, B, ...)``, mask or None.
Batch = tuple[Tensor, Tensor, Tensor | None]


class EnsembleTrainer:
    """Train one model configuration over several seeds at once.

    Args:
        model_factory: ``() -> nn.Module`` building one model on the CPU; called once per
            seed with torch's CPU generator seeded with the seed, so seed ``k`` starts from
            ``torch.manual_seed(k); model_factory()``. The model is then moved to ``dtype``
            and ``device``. It must follow the :class:`~gatescope.SequenceModel` protocol:
            ``forward(u) -> predictions`` and ``loss_from_predictions(pred, y, mask)``.
            :func:`~gatescope.training.task_model_factory` builds one for a task.
        seeds: distinct integer seeds; ``E = len(seeds)``.
        task: where the batches come from; seed ``k`` draws ``batch_size`` fresh sequences
            per step from ``stream_generator(k, "data")``.
        optimizer: a name from :func:`~gatescope.training.list_optimizers`.
        lr: learning rate (finite, > 0).
        batch_size: sequences per seed per step.
        optimizer_options: extra options for the torch optimizer (``betas=``, ...).
        dtype: floating dtype of parameters and batches.
        device: where parameters and batches live.
        mode: how the E losses are computed: ``"batched"``, ``"vmap"`` or ``"auto"``
            (see :func:`gatescope.training.forward.ensemble_loss`); :attr:`mode` tells
            which one runs.
        fixed_batch: train every step on the same batch per seed (the first one of its data
            stream) instead of a fresh one; what the paper's §VII-B code does.
        clip_norm: rescale each seed's gradient to norm at most ``clip_norm`` (its 2-norm
            over all of its parameters, ``torch.nn.utils.clip_grad_norm_``'s rule
            ``g · min(1, c / (‖g‖ + 1e-6))``); ``None``: no clipping.
        forcing: heavy-tailed forcing of some parameters' updates after every step
            (:class:`~gatescope.training.forcing.StableForcing`); ``None``: none.
        seeds_per_pass: run the forward and backward pass of each step on this many
            seeds at a time (the gradients are the same: seeds share nothing), so that only
            one chunk's autograd graph is alive at once; ``None``: all seeds in one pass.
            Fewer seeds per pass bound the graph's memory (long sequences, many seeds) and,
            for CPU LSTM ensembles, keep each pass's working set in cache
            (docs/performance.md#lstm-ensembles).

    Raises:
        ValueError: no or repeated seeds, a bad batch size, optimizer, learning rate,
            ``clip_norm`` or ``seeds_per_pass``, or forcing of parameters the model does
            not train.
    """

    def __init__(self, model_factory: Callable[[], nn.Module], seeds: Iterable[int],
                 task: Task, *, optimizer: str = "adam", lr: float = 1e-3,
                 batch_size: int = 64, optimizer_options: dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 mode: str = "auto", fixed_batch: bool = False, clip_norm: float | None = None,
                 forcing: StableForcing | None = None,
                 seeds_per_pass: int | None = None) -> None:
        self.seeds = tuple(int(s) for s in seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct integers, at least one; got {self.seeds}")
        self._chunks = _seed_chunks(len(self.seeds), seeds_per_pass)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if clip_norm is not None and not (isinstance(clip_norm, int | float)
                                          and 0 < clip_norm < float("inf")):
            raise ValueError(f"clip_norm must be a finite number > 0 or None; got {clip_norm!r}")
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.task = task
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.device = torch.device(device)
        models = [seeded_init(model_factory, s).to(dtype=dtype, device=self.device)
                  for s in self.seeds]
        self._template = models[0]
        self._params, self._buffers = stack_module_state(models)
        self._trainable_names = [k for k, p in self._params.items() if p.requires_grad]
        self._trainable = [self._params[k] for k in self._trainable_names]
        if forcing is not None:
            unknown = sorted(set(forcing.parameters) - set(self._trainable_names))
            if unknown:
                raise ValueError(f"forcing names {unknown}, which the model does not train; "
                                 f"its parameters: {self._trainable_names}")
        self.forcing = forcing
        self._forcing_generators = [stream_generator(s, FORCING_STREAM) for s in self.seeds]
        self.optimizer = make_optimizer(optimizer, self._trainable, lr,
                                        **(optimizer_options or {}))
        self.optimizer_name = optimizer
        self._generators = [stream_generator(s, DATA_STREAM) for s in self.seeds]
        #: The batch every step trains on when ``fixed_batch`` (drawn from fresh copies of
        #: the data streams, so a restored trainer gets the same one).
        self.fixed_batch = self.sample_batch(
            [stream_generator(s, DATA_STREAM) for s in self.seeds]) if fixed_batch else None
        probe = self._stack([task.sample(2, torch.Generator().manual_seed(0), dtype=dtype)]
                            * len(self.seeds))
        self._loss, self.mode = ensemble_loss(self._template, mode, self._params,
                                              self._buffers, probe)
        self.steps_done = 0
        #: The last checkpoint step :meth:`train` handed to its callback (-1: none yet).
        self.last_checkpoint = -1
        self._history: list[Tensor] = []
        self._alive = torch.ones(len(self.seeds), dtype=torch.bool, device=self.device)
        self._diverged_at = torch.full((len(self.seeds),), -1, dtype=torch.long,
                                       device=self.device)

    # ------------------------------------------------------------------ data

    @property
    def ensemble_size(self) -> int:
        """``E``, the number of seeds."""
        return len(self.seeds)

    def _stack(self, parts: Sequence[tuple[Tensor, ...]]) -> Batch:
        stacked = [torch.stack(p).to(self.device) for p in zip(*parts, strict=True)]
        return stacked[0], stacked[1], (stacked[2] if len(stacked) > 2 else None)

    def sample_batch(self, generators: Sequence[torch.Generator] | None = None,
                     batch_size: int | None = None) -> Batch:
        """One batch per seed, stacked: ``u (E, B, T, m)``, ``y (E, B, ...)``, ``mask``.

        Args:
            generators: one CPU generator per seed; default: the seeds' training streams
                (drawing from them advances training's data).
            batch_size: ``B``; default: the training batch size.
        """
        gens = self._generators if generators is None else generators
        size = self.batch_size if batch_size is None else batch_size
        return self._stack([self.task.sample(size, g, dtype=self.dtype) for g in gens])

    # ------------------------------------------------------------------ training

    def losses_on(self, batch: Batch) -> Tensor:
        """``(E,)`` per-seed losses of the current parameters on a stacked batch (no grad)."""
        with torch.no_grad():
            return self._loss(self._params, self._buffers, *batch)

    def step(self) -> Tensor:
        """One optimisation step of every live seed on a fresh batch.

        Returns:
            ``(E,)`` the step's losses (before the update); NaN for seeds that had
            diverged earlier.
        """
        batch = self.sample_batch() if self.fixed_batch is None else self.fixed_batch
        self.optimizer.zero_grad(set_to_none=True)
        losses = torch.cat([self._backward(chunk, batch) for chunk in self._chunks])
        alive = self._alive & torch.isfinite(losses)
        for p in self._trainable:
            if p.grad is not None:
                alive &= torch.isfinite(p.grad).reshape(len(self.seeds), -1).all(1)
        if self.clip_norm is not None:
            self._clip_gradients(alive)
        before = None if self.forcing is None else [p.detach().clone() for p in self._trainable]
        if self._all_alive(alive):
            self.optimizer.step()
        else:
            self._step_alive_only(alive)
        if before is not None:
            alive = self._force(alive, before)
        recorded = torch.where(self._alive, losses.detach(), torch.nan)
        self._diverged_at = torch.where(self._alive & ~alive, self.steps_done,
                                        self._diverged_at)
        self._alive = alive
        self._history.append(recorded)
        self.steps_done += 1
        return recorded

    def _backward(self, chunk: slice | None, batch: Batch) -> Tensor:
        """The losses of the seeds in ``chunk`` (``None``: all), detached, after their
        backward pass has added the live ones' gradients to the parameters' ``.grad``."""
        params, buffers = self._params, self._buffers
        if chunk is not None:
            params = {k: v[chunk] for k, v in params.items()}
            buffers = {k: v[chunk] for k, v in buffers.items()}
            batch = tuple(None if t is None else t[chunk] for t in batch)
        losses = self._loss(params, buffers, *batch)
        alive = self._alive[chunk or slice(None)] & torch.isfinite(losses.detach())
        torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
        return losses.detach()

    def _clip_gradients(self, alive: Tensor) -> None:
        """Rescale each live seed's gradient by ``min(1, clip_norm / (‖g_k‖ + 1e-6))``, its
        own 2-norm over all of its parameters (``torch.nn.utils.clip_grad_norm_``)."""
        grads = [p.grad for p in self._trainable if p.grad is not None]
        if not grads:
            return
        norms = torch.stack([g.reshape(len(self.seeds), -1).pow(2).sum(1) for g in grads]
                            ).sum(0).sqrt()
        coef = (self.clip_norm / (norms + 1e-6)).clamp(max=1.0)
        coef = torch.where(alive, coef, torch.ones_like(coef))
        for g in grads:
            g.mul_(self._per_seed(coef, g))

    def _force(self, alive: Tensor, before: list[Tensor]) -> Tensor:
        """Apply :attr:`forcing` to the live seeds; a seed whose forced parameters stop being
        finite goes back to ``before`` (its parameters before the step) and is returned as
        no longer alive."""
        with torch.no_grad():
            finite = self.forcing.apply(
                self._params, dict(zip(self._trainable_names, before, strict=True)),
                self._forcing_generators, alive)
            lost = alive & ~finite
            if not self._all_alive(~lost):  # on the CPU, only when a seed was lost
                for p, old in zip(self._trainable, before, strict=True):
                    p.copy_(torch.where(self._per_seed(lost, p), old, p))
        return alive & finite

    def _all_alive(self, alive: Tensor) -> bool:
        """Whether every seed is known to be alive without waiting for the device: on the
        CPU (nothing to wait for) the flags are read; elsewhere this is ``False``, so that
        :meth:`_step_alive_only` runs without a synchronisation."""
        return self.device.type == "cpu" and bool(alive.all())

    def _step_alive_only(self, alive: Tensor) -> None:
        """One optimizer step that leaves the seeds not ``alive`` (``(E,)`` bool) exactly as
        they were: their gradients are zeroed, and their parameters are restored after the
        step (an optimizer's momentum may move a parameter whose gradient is zero)."""
        before = [p.detach().clone() for p in self._trainable]
        for p in self._trainable:
            if p.grad is not None:
                p.grad.masked_fill_(~self._per_seed(alive, p), 0)
        self.optimizer.step()
        with torch.no_grad():
            for p, old in zip(self._trainable, before, strict=True):
                p.copy_(torch.where(self._per_seed(alive, p), p, old))

    @staticmethod
    def _per_seed(flags: Tensor, like: Tensor) -> Tensor:
        """``(E,)`` flags shaped to broadcast against a stacked ``(E, ...)`` tensor."""
        return flags.reshape(-1, *([1] * (like.dim() - 1)))

    def train(self, steps: int, checkpoints: Iterable[int] = (),
              on_checkpoint: Callable[[EnsembleTrainer], None] | None = None,
              progress: Callable[[int, int], None] | None = None) -> EnsembleTrainer:
        """Train until :attr:`steps_done` reaches ``steps``.

        Args:
            steps: the total number of steps (not the number still to do), so a trainer
                restored from a checkpoint continues where it stopped.
            checkpoints: steps (``0 <= c <= steps``) at which ``on_checkpoint(self)`` is
                called, after ``c`` updates; a checkpoint is handed over once, even across
                a save and restore (:attr:`last_checkpoint`).
            on_checkpoint: e.g. measure the models and save the trainer.
            progress: ``progress(steps_done, steps)`` after every step.

        Returns:
            ``self``.
        """
        marks = sorted({int(c) for c in checkpoints})
        if steps < self.steps_done:
            raise ValueError(f"steps={steps} is below the {self.steps_done} steps already done")
        if marks and (marks[0] < 0 or marks[-1] > steps):
            raise ValueError(f"checkpoints must lie in [0, {steps}]; got {marks}")
        while True:
            if self.steps_done in marks and self.steps_done > self.last_checkpoint:
                self.last_checkpoint = self.steps_done
                if on_checkpoint is not None:
                    on_checkpoint(self)
            if self.steps_done >= steps:
                return self
            self.step()
            if progress is not None:
                progress(self.steps_done, steps)

    # ------------------------------------------------------------------ results

    @property
    def losses(self) -> Tensor:
        """``(E, steps_done)`` training losses on the CPU; NaN after a seed diverged."""
        if not self._history:
            return torch.empty(len(self.seeds), 0, dtype=self.dtype)
        return torch.stack(self._history, 1).cpu()

    @property
    def diverged_at(self) -> list[int | None]:
        """Per seed, the step whose loss or gradient was not finite, or ``None``."""
        return [None if s < 0 else int(s) for s in self._diverged_at.tolist()]

    @property
    def alive(self) -> Tensor:
        """``(E,)`` bool on the CPU: the seeds that have not diverged."""
        return self._alive.cpu()

    @property
    def stacked_parameters(self) -> dict[str, Tensor]:
        """The live ``{name: (E, *shape)}`` leaf tensors the optimizer updates."""
        return self._params

    def model(self, index: int) -> nn.Module:
        """A copy of the model holding the current parameters of ``seeds[index]``.

        The copy shares nothing with the trainer: measure it, differentiate through it.
        """
        model = copy.deepcopy(self._template)
        state = {name: t[index] for name, t in {**self._params, **self._buffers}.items()}
        model.load_state_dict(state)
        return model

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: parameters, optimizer, data streams,
        step counters, loss history and divergence. Plain tensors and containers only, so
        it loads with ``torch.load(weights_only=True)``."""
        return {
            "format": STATE_FORMAT,
            "seeds": list(self.seeds),
            "optimizer_name": self.optimizer_name,
            "steps_done": self.steps_done,
            "last_checkpoint": self.last_checkpoint,
            "params": {k: v.detach().cpu() for k, v in self._params.items()},
            "buffers": {k: v.cpu() for k, v in self._buffers.items()},
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self._generators],
            "losses": self.losses,
            "alive": self._alive.cpu(),
            "diverged_at": self._diverged_at.cpu(),
            "forcing_generators": [g.get_state() for g in self._forcing_generators],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ValueError: the state belongs to another setup (seeds, optimizer, model shapes);
                checked before anything changes.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown trainer state format {state.get('format')!r}")
        for key, mine in (("seeds", list(self.seeds)), ("optimizer_name", self.optimizer_name)):
            if state[key] != mine:
                raise ValueError(f"state is for {key} {state[key]!r}, this trainer has {mine!r}")
        shapes = lambda d: {k: tuple(v.shape) for k, v in d.items()}  # noqa: E731
        if (shapes(state["params"]) != shapes(self._params)
                or shapes(state["buffers"]) != shapes(self._buffers)
                or len(state["generators"]) != len(self._generators)):
            raise ValueError("state does not match this trainer's model or seeds")
        if self.forcing is not None and len(state.get("forcing_generators", [])) != len(
                self._forcing_generators):
            raise ValueError("state has no forcing streams, and this trainer forces its updates")
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            for live, saved in ((self._params, state["params"]),
                                (self._buffers, state["buffers"])):
                for k, v in live.items():
                    v.copy_(saved[k])
        for g, s in zip(self._generators, state["generators"], strict=True):
            g.set_state(s)
        if self.forcing is not None:
            for g, s in zip(self._forcing_generators, state["forcing_generators"], strict=True):
                g.set_state(s)
        self.steps_done = int(state["steps_done"])
        self.last_checkpoint = int(state["last_checkpoint"])
        losses = state["losses"].to(device=self.device, dtype=self.dtype)
        self._history = list(losses.unbind(1))
        self._alive = state["alive"].to(self.device)
        self._diverged_at = state["diverged_at"].to(self.device)


def _seed_chunks(size: int, seeds_per_pass: int | None) -> list[slice | None]:
    """The slices of the ``size`` seeds that one pass each runs: ``[None]`` (all at once)
    when ``seeds_per_pass`` is ``None`` or at least ``size``.

    Raises:
        ValueError: ``seeds_per_pass`` not a positive integer or ``None``.
    """
    if seeds_per_pass is None:
        return [None]
    if isinstance(seeds_per_pass, bool) or not isinstance(seeds_per_pass, int) or (
            seeds_per_pass < 1):
        raise ValueError(f"seeds_per_pass must be a positive integer or None; got "
                         f"{seeds_per_pass!r}")
    if seeds_per_pass >= size:
        return [None]
    return [slice(s, s + seeds_per_pass) for s in range(0, size, seeds_per_pass)]
