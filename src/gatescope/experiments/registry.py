"""A name -> experiment registry: ``gatescope run NAME`` runs the experiment registered as NAME."""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry
from .base import Experiment

_EXPERIMENTS: Registry[type[Experiment]] = Registry("experiment", Experiment)


def register_experiment(name: str) -> Callable[[type[Experiment]], type[Experiment]]:
    """Class decorator that makes an :class:`Experiment` subclass runnable as ``name``.

    Registering a name again replaces the earlier class.

    Example:
        >>> @register_experiment("my_experiment")
        ... class Mine(Experiment): ...
        >>> experiment_class("my_experiment") is Mine, "my_experiment" in list_experiments()
        (True, True)

    ``docs/adding-an-experiment.md`` builds a complete experiment and runs it.
    """
    return _EXPERIMENTS.register(name)


def list_experiments() -> list[str]:
    """Names of the registered experiments, in registration order."""
    return _EXPERIMENTS.names()


def experiment_class(name: str) -> type[Experiment]:
    """The class registered as ``name``; ``ValueError`` naming the choices otherwise."""
    return _EXPERIMENTS.lookup(name)


def get_experiment(name: str) -> Experiment:
    """A fresh instance of the experiment registered as ``name``."""
    return experiment_class(name)()
