"""A name -> entry registry, the one mechanism behind ``register_cell``, ``register_task``,
``register_experiment`` (classes) and ``register_quantity`` (quantity declarations)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Registered entries by name, in registration order.

    Args:
        kind: what is registered (``"cell"``, ``"task"``...), for messages.
        base: the class every registered class must subclass or, with ``instances``,
            every registered entry must be an instance of.
        instances: entries are instances of ``base`` rather than subclasses.
    """

    def __init__(self, kind: str, base: type, instances: bool = False) -> None:
        super().__init__()
        self.kind, self.base, self.instances = kind, base, instances

    def check(self, name: str, entry: object) -> None:
        """``TypeError`` unless ``entry`` may be registered here."""
        ok = isinstance(entry, self.base) if self.instances else \
            isinstance(entry, type) and issubclass(entry, self.base)
        if not ok:
            what = "instance" if self.instances else "subclass"
            raise TypeError(f"register_{self.kind}({name!r}) expects a {self.base.__name__} "
                            f"{what}; got {entry!r}")

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name`` (replacing an earlier one) after checking its type."""
        self.check(name, entry)
        self[name] = entry
        return entry

    def register(self, name: str, prepare: Callable[[T], T] | None = None
                 ) -> Callable[[T], T]:
        """A class decorator that registers its class as ``name`` (setting ``cls.name``);
        ``prepare`` may transform the class first. Registering a name again replaces it."""

        def decorate(cls: T) -> T:
            self.check(name, cls)  # before ``prepare`` sees it
            if prepare is not None:
                cls = prepare(cls)
            cls.name = name
            return self.add(name, cls)

        return decorate

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self)

    def lookup(self, name: str) -> T:
        """The entry registered as ``name``; ``ValueError`` naming the choices otherwise."""
        try:
            return self[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of "
                             f"{self.names()}") from None

    def copy(self) -> Registry[T]:
        """A registry of the same kind with the same entries."""
        other = Registry(self.kind, self.base, self.instances)
        other.update(self)
        return other
