"""A name -> experiment registry: ``gatescope run NAME`` runs the experiment registered as NAME."""

from __future__ import annotations

from collections.abc import Callable

from .base import Experiment

_EXPERIMENTS: dict[str, type[Experiment]] = {}


def register_experiment(name: str) -> Callable[[type[Experiment]], type[Experiment]]:
    """Class decorator that makes an :class:`Experiment` subclass runnable as ``name``.

    Registering a name again replaces the earlier class.

    Example:
        >>> @register_experiment("my_experiment")
        ... class Mine(Experiment): ...
    """

    def decorate(cls: type[Experiment]) -> type[Experiment]:
        if not (isinstance(cls, type) and issubclass(cls, Experiment)):
            raise TypeError(f"register_experiment({name!r}) expects an Experiment subclass")
        cls.name = name
        _EXPERIMENTS[name] = cls
        return cls

    return decorate


def list_experiments() -> list[str]:
    """Names of the registered experiments, in registration order."""
    return list(_EXPERIMENTS)


def experiment_class(name: str) -> type[Experiment]:
    """The class registered as ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return _EXPERIMENTS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown experiment {name!r}; choose one of {list_experiments()}") from None


def get_experiment(name: str) -> Experiment:
    """A fresh instance of the experiment registered as ``name``."""
    return experiment_class(name)()
