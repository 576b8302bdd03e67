"""Typed settings: one way to declare and check the fields of a configuration dataclass.

A settings class is a dataclass whose fields declare their constraint with :func:`setting` and whose
``__post_init__`` calls :func:`check_settings`; the type comes from the field's annotation::

    @dataclass(frozen=True, kw_only=True)
    class HierarchicalParams:
        beam: int = setting(8, minimum=1)

        def __post_init__(self) -> None:
            check_settings(self)

    HierarchicalParams(beam=0)  # ConfigError: HierarchicalParams.beam must be >= 1; got 0

Cross-field rules stay in the class, after the call. :func:`settings_from_mapping` builds a settings class
from a mapping (a TOML table or a JSON object) and refuses keys the class does not have.

Types understood: ``int`` (not ``bool``), ``float`` (an ``int`` is converted), ``bool``, ``str``, ``Path``
(a ``str`` is converted), an ``Enum`` (its value is converted), ``X | None``, a union with an ``Enum``
(``Algorithm | str``: converted to the enum), ``tuple[int, ...]`` and ``tuple[str, ...]`` (a list, or
one value, is converted) and ``dict[str, X]``. Other annotations are not checked.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mol_core.errors import ConfigError

__all__ = ["Constraint", "check_settings", "setting", "settings_from_mapping"]

_METADATA_KEY = "mol_core.setting"
T = TypeVar("T")


@dataclass(frozen=True)
class Constraint:
    """What a setting's value must satisfy besides its type (``None`` = no such rule).

    Attributes:
        minimum: the value is ``>= minimum``.
        above: the value is ``> above``.
        maximum: the value is ``<= maximum``.
        below: the value is ``< below`` (a fraction in ``[0, 1)``: ``minimum=0, below=1``).
        choices: the value is one of these.
        pattern: or, for a string, matches this regular expression as a whole.
        expected: the wording of what is expected in error messages, instead of the generated one.
    """

    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    below: float | None = None
    choices: tuple[Any, ...] | None = None
    pattern: str | None = None
    expected: str | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (e.g. ``"must be >= 1"``), or ``None`` if it satisfies the rule."""
        if self.choices is not None or self.pattern is not None:
            in_choices = self.choices is not None and value in self.choices
            matches = (
                isinstance(value, str) and self.pattern is not None and re.fullmatch(self.pattern, value)
            )
            if not (in_choices or matches):
                return f"must be {self.expected or self._choices_text()}"
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric:
            return None
        bounds = [
            (self.minimum is not None and value < self.minimum, f">= {self.minimum}"),
            (self.above is not None and value <= self.above, f"> {self.above}"),
            (self.maximum is not None and value > self.maximum, f"<= {self.maximum}"),
            (self.below is not None and value >= self.below, f"< {self.below}"),
        ]
        if any(broken for broken, _ in bounds):
            return f"must be {self.expected or self._range_text()}"
        return None

    def _choices_text(self) -> str:
        names = [repr(c.value if isinstance(c, enum.Enum) else c) for c in self.choices or ()]
        if self.pattern is not None:
            names.append(f"a string matching {self.pattern}")
        return f"one of {', '.join(names)}"

    def _range_text(self) -> str:
        if self.minimum is not None and self.below is not None:
            return f"in [{self.minimum}, {self.below})"
        if self.minimum is not None and self.maximum is not None:
            return f"in [{self.minimum}, {self.maximum}]"
        if self.minimum is not None:
            return f">= {self.minimum}"
        if self.above is not None:
            return f"> {self.above}"
        if self.maximum is not None:
            return f"<= {self.maximum}"
        return f"< {self.below}"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    choices: tuple[Any, ...] | None = None,
    pattern: str | None = None,
    expected: str | None = None,
) -> Any:
    """A dataclass field with a :class:`Constraint` that :func:`check_settings` enforces.

    Args:
        default, default_factory: as :func:`dataclasses.field`.
        minimum, above, maximum, below, choices, pattern, expected: the :class:`Constraint`.
    """
    constraint = Constraint(minimum, above, maximum, below, choices, pattern, expected)
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={_METADATA_KEY: constraint}
    )


def check_settings(obj: Any, prefix: str | None = None) -> None:
    """Checks every field of the dataclass instance ``obj`` against its type and its :func:`setting`
    constraint, converting values where that loses nothing (see the module docstring); works on frozen
    dataclasses.

    Args:
        obj: a dataclass instance (call from its ``__post_init__``).
        prefix: how fields are named in messages: ``prefix.name``; ``None`` uses the class name, ``""``
            the bare field name.

    Raises:
        ConfigError: ``"<prefix>.<name> must be <what>; got <value>"`` for the first field that is wrong.
    """
    owner = type(obj).__name__ if prefix is None else prefix
    hints = typing.get_type_hints(type(obj))
    for spec in dataclasses.fields(obj):
        where = f"{owner}.{spec.name}" if owner else spec.name
        value = _convert(hints.get(spec.name, Any), getattr(obj, spec.name), where)
        constraint = spec.metadata.get(_METADATA_KEY)
        problem = None if constraint is None or value is None else constraint.problem(value)
        if problem is not None:
            shown = value.value if isinstance(value, enum.Enum) else value
            raise ConfigError(f"{where} {problem}; got {shown!r}")
        object.__setattr__(obj, spec.name, value)


def settings_from_mapping(cls: type[T], values: Any, where: str) -> T:
    """``cls(**values)`` for a settings dataclass, refusing what is not a mapping and unknown keys.

    Args:
        cls: the settings class (its ``__post_init__`` checks the values).
        values: a mapping of field name to value.
        where: names the source in messages, e.g. ``"preset tiny_cpu [train]"``.

    Raises:
        ConfigError: ``values`` is not a mapping, has keys ``cls`` does not have (the message lists the
            valid ones), or a value is wrong (the message starts with ``where``).
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a table of key = value pairs; got {values!r}")
    names = {spec.name for spec in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint`` and converted where that loses nothing."""
    origin = typing.get_origin(hint)
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        return _convert_union(typing.get_args(hint), value, where)
    if origin is tuple:
        element = (typing.get_args(hint) or (int,))[0]
        if element is str:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} must be a list of strings; got {value!r}")
            return tuple(value)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
            raise ConfigError(f"{where} must be a list of integers; got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table; got {value!r}")
        value_hint = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        return {str(key): _convert(value_hint, item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in hint)
            raise ConfigError(f"{where} must be one of {choices}; got {value!r}") from None
    if hint is float and _is_int(value):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint in (int, float, bool, str, Path) and not _is_instance(value, hint):
        raise ConfigError(f"{where} must be of type {hint.__name__}; got {value!r}")
    return value


def _convert_union(options: tuple[Any, ...], value: Any, where: str) -> Any:
    """``value`` against ``X | Y | ...``: ``None`` if allowed, an enum member if an option is an enum,
    else the first option it converts to."""
    if value is None and type(None) in options:
        return None
    concrete = [option for option in options if option is not type(None)]
    for option in concrete:
        if isinstance(option, type) and issubclass(option, enum.Enum):
            return _convert(option, value, where)
    for option in concrete:
        try:
            return _convert(option, value, where)
        except ConfigError:
            continue
    names = [getattr(option, "__name__", str(option)) for option in concrete]
    if type(None) in options:
        names.append("None")
    raise ConfigError(f"{where} must be of type {' or '.join(names)}; got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_instance(value: Any, hint: type) -> bool:
    if hint is int:
        return _is_int(value)
    if hint is float:
        return isinstance(value, float)
    return isinstance(value, hint)
