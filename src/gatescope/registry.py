"""A name -> class registry, the one mechanism behind ``register_cell``, ``register_task`` and
``register_experiment``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict[str, T], Generic[T]):
    """Registered classes by name, in registration order.

    Args:
        kind: what is registered (``"cell"``, ``"task"``...), for messages.
        base: the class every registered class must subclass.
    """

    def __init__(self, kind: str, base: type) -> None:
        super().__init__()
        self.kind, self.base = kind, base

    def register(self, name: str, prepare: Callable[[T], T] | None = None
                 ) -> Callable[[T], T]:
        """A class decorator that registers its class as ``name`` (setting ``cls.name``);
        ``prepare`` may transform the class first. Registering a name again replaces it."""

        def decorate(cls: T) -> T:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"register_{self.kind}({name!r}) expects a "
                                f"{self.base.__name__} subclass; got {cls!r}")
            if prepare is not None:
                cls = prepare(cls)
            cls.name = name
            self[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self)

    def get_class(self, name: str) -> T:
        """The class registered as ``name``; ``ValueError`` naming the choices otherwise."""
        try:
            return self[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of "
                             f"{self.names()}") from None

    def copy(self) -> Registry[T]:
        """A registry of the same kind with the same entries."""
        other = Registry(self.kind, self.base)
        other.update(self)
        return other
