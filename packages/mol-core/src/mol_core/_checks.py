"""Small argument checks shared by mol-core modules; each raises a message that names what was expected."""

from __future__ import annotations

import torch

from mol_core.errors import ConfigError, ShapeError

__all__ = [
    "check_fraction",
    "check_positive_float",
    "check_positive_int",
    "check_rank",
    "shape_str",
]


def shape_str(shape: tuple[int | str, ...] | torch.Size) -> str:
    """Formats a shape as ``(4, 8, 64)``, leaving symbolic dimensions as their names."""
    return "(" + ", ".join(str(dim) for dim in shape) + ")"


def check_rank(name: str, tensor: torch.Tensor, expected: tuple[int | str, ...]) -> None:
    """Raises :class:`ShapeError` unless ``tensor`` matches ``expected``.

    Args:
        name: the argument name used in the message.
        tensor: the tensor to check.
        expected: one entry per dimension; an ``int`` must match exactly, a ``str`` names a free dimension.

    Raises:
        ShapeError: the number of dimensions or a fixed dimension differs.
    """
    ok = tensor.dim() == len(expected) and all(
        isinstance(want, str) or got == want for got, want in zip(tensor.shape, expected, strict=False)
    )
    if not ok:
        raise ShapeError(f"{name} must have shape {shape_str(expected)}; got {shape_str(tensor.shape)}")


def check_positive_int(name: str, value: int) -> int:
    """Returns ``value`` if it is an int >= 1, else raises :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    return value


def check_positive_float(name: str, value: float) -> float:
    """Returns ``value`` as a float if it is finite and > 0, else raises :class:`ConfigError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 < float(value) < float("inf")
    ):
        raise ConfigError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def check_fraction(name: str, value: float) -> float:
    """Returns ``value`` as a float if it lies in [0, 1), else raises :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1); got {value!r}")
    return float(value)
