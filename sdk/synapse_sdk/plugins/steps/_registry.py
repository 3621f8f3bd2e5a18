"""The ordered, name-unique list of steps an action registers in ``setup_steps``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Generic

from synapse_sdk.errors import StepRegistryError
from synapse_sdk.plugins.steps._base import BaseStep, C

logger = logging.getLogger(__name__)

__all__ = ["StepRegistry"]


class StepRegistry(Generic[C]):
    """Steps in execution order; names are unique."""

    def __init__(self) -> None:
        self._steps: list[BaseStep[C]] = []

    def register(self, step: BaseStep[C]) -> StepRegistry[C]:
        """Append ``step``; returns the registry so calls can be chained."""
        self._check_new(step)
        self._steps.append(step)
        return self

    def unregister(self, name: str) -> BaseStep[C]:
        """Remove and return the step called ``name``."""
        index = self._index(name)
        return self._steps.pop(index)

    def insert_before(self, name: str, step: BaseStep[C]) -> StepRegistry[C]:
        """Insert ``step`` just before the step called ``name``."""
        self._check_new(step)
        self._steps.insert(self._index(name), step)
        return self

    def insert_after(self, name: str, step: BaseStep[C]) -> StepRegistry[C]:
        """Insert ``step`` just after the step called ``name``."""
        self._check_new(step)
        self._steps.insert(self._index(name) + 1, step)
        return self

    def get(self, name: str) -> BaseStep[C]:
        """The step called ``name``."""
        return self._steps[self._index(name)]

    @property
    def names(self) -> list[str]:
        """Step names in execution order."""
        return [step.name for step in self._steps]

    @property
    def steps(self) -> list[BaseStep[C]]:
        """A copy of the steps in execution order."""
        return list(self._steps)

    def __iter__(self) -> Iterator[BaseStep[C]]:
        return iter(list(self._steps))

    def __len__(self) -> int:
        return len(self._steps)

    def __bool__(self) -> bool:
        return bool(self._steps)

    def __contains__(self, name: object) -> bool:
        return any(step.name == name for step in self._steps)

    def _index(self, name: str) -> int:
        for index, step in enumerate(self._steps):
            if step.name == name:
                return index
        raise StepRegistryError(f"no step named '{name}' (registered: {self.names or 'none'})")

    def _check_new(self, step: BaseStep[C]) -> None:
        if not isinstance(step, BaseStep):
            raise StepRegistryError(f"expected a BaseStep instance, got {type(step).__name__}")
        name = step.name
        if not isinstance(name, str) or not name:
            raise StepRegistryError(f"step {type(step).__name__} has an empty or non-string name")
        if name in self:
            raise StepRegistryError(f"a step named '{name}' is already registered")
