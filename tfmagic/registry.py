"""Named choices: one registry per choice, mapping each name to what builds it.

A choice of tfmagic (an LR schedule, an optimizer, an augmentation policy, a crop scheme, a
backbone, a pooling, ...) is named in exactly one place, its `Registry`. The Recipe's allowed
values and flag help, the plots' labels and the checklist's trials read the registry, so a
new choice is one `register` call, and a name is never dispatched by hand elsewhere.

A registry iterates over its names in registration order, so it stands wherever a tuple of
names did (``name in registry``, ``list(registry)``, ``", ".join(registry)``).

Example:

>>> poolings = Registry("pooling")
>>> @poolings.register("max", help="the largest value of each channel")
... def _max(values):
...     return max(values)
>>> list(poolings), "max" in poolings, poolings["max"].help
(['max'], True, 'the largest value of each channel')
>>> poolings.build("max", [3, 1])
3
>>> poolings.choice("min")
Traceback (most recent call last):
...
ValueError: pooling='min' is not allowed: must be one of max
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tfmagic._checks import check


@dataclasses.dataclass(frozen=True)
class Choice:
    """One registered name.

    Attributes:
        name: the name, as flags, flagfiles and the Recipe spell it.
        build: what the name stands for: a class or a function that builds it (its
            arguments are the registry's convention, stated where the registry is defined).
        help: one line for flag help and documentation.
        label: a function of a Recipe giving the words a plot title uses for this choice
            with that Recipe's settings ("P=2, 2 cycles x0.5"); None when the name says all.
    """

    name: str
    build: Callable[..., Any]
    help: str
    label: Callable[[Any], str] | None = None


class Registry(Mapping[str, Choice]):
    """The choices of one field: name -> `Choice`, in registration order.

    Args:
        field: the name of the argument or Recipe field the choice is made with; error
            messages name it.
    """

    def __init__(self, field: str):
        self.field = field
        self._choices: dict[str, Choice] = {}

    def register(self, name: str, build: Callable[..., Any] | None = None, *, help: str,
                 label: Callable[[Any], str] | None = None) -> Callable[..., Any]:
        """Register ``build`` under ``name``; without ``build``, a decorator that does.

        Returns what it registers, so a decorated class or function stays usable as is.

        Raises:
            ValueError: ``name`` is empty, not a plain identifier-like word, or taken.
        """
        check(isinstance(name, str) and name.replace("_", "").replace(".", "").isalnum(),
              "name", name, "must be letters, digits, '_' and '.'")
        check(name not in self._choices, "name", name,
              f"{self.field} already has a choice of that name")

        def add(target: Callable[..., Any]) -> Callable[..., Any]:
            self._choices[name] = Choice(name, target, help, label)
            return target

        return add if build is None else add(build)

    def choice(self, name: str) -> Choice:
        """The choice called ``name``, or a ValueError naming the field and the choices."""
        check(name in self._choices, self.field, name, f"must be one of {', '.join(self)}")
        return self._choices[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the builder registered under ``name`` with the given arguments."""
        return self.choice(name).build(*args, **kwargs)

    def label(self, name: str, recipe: Any) -> str:
        """The plot words for ``name`` with ``recipe``'s settings ("" when it has none)."""
        labeller = self.choice(name).label
        return labeller(recipe) if labeller else ""

    def help_text(self) -> str:
        """Every choice with its help, for flag help: ``a: ...; b: ...``."""
        return "; ".join(f"{c.name}: {c.help}" for c in self._choices.values())

    def __getitem__(self, name: str) -> Choice:
        return self._choices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def __contains__(self, name: object) -> bool:
        return name in self._choices

    def __repr__(self) -> str:
        return f"Registry({self.field!r}: {', '.join(self)})"
