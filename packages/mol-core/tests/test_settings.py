"""Typed settings: types converted or refused, constraints enforced, unknown keys refused."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mol_core import ConfigError
from mol_core.settings import check_settings, setting, settings_from_mapping


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, kw_only=True)
class Example:
    count: int = setting(3, minimum=1)
    rate: float = setting(0.5, minimum=0, below=1)
    scale: float = setting(1.0, above=0)
    port: int = setting(0, minimum=0, maximum=65535)
    limit: int | None = setting(None, minimum=1)
    colour: Colour = Colour.RED
    either: Colour | str = setting(Colour.RED, choices=(Colour.RED,))
    mode: str = setting("auto", choices=("auto", "cpu"), pattern=r"cuda:\d+")
    flag: bool = False
    where: Path | None = None
    sizes: tuple[int, ...] = (2, 2)
    names: tuple[str, ...] = ()
    paths: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_settings(self)


def test_values_are_converted_where_nothing_is_lost() -> None:
    example = Example(
        rate=0, colour="blue", mode="cuda:1", where="a/b", sizes=[3, 4], paths={"x": "p"}, either="red"
    )  # type: ignore[arg-type]
    assert example.rate == 0.0
    assert isinstance(example.rate, float)
    assert example.colour is Colour.BLUE
    assert example.either is Colour.RED
    assert example.where == Path("a/b")
    assert example.sizes == (3, 4)
    assert example.paths == {"x": Path("p")}
    assert Example(sizes=5).sizes == (5,)  # type: ignore[arg-type]
    assert Example(names=["a", "b"]).names == ("a", "b")  # type: ignore[arg-type]
    assert Example(names="a").names == ("a",)  # type: ignore[arg-type]
    assert Example(limit=None).limit is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, r"Example\.count must be >= 1; got 0"),
        ({"count": True}, r"Example\.count must be of type int; got True"),
        ({"count": 2.0}, r"Example\.count must be of type int; got 2\.0"),
        ({"rate": 1.0}, r"Example\.rate must be in \[0, 1\); got 1\.0"),
        ({"rate": -0.1}, r"Example\.rate must be in \[0, 1\)"),
        ({"scale": 0.0}, r"Example\.scale must be > 0; got 0\.0"),
        ({"port": 70000}, r"Example\.port must be in \[0, 65535\]; got 70000"),
        ({"limit": 0}, r"Example\.limit must be >= 1; got 0"),
        ({"limit": "3"}, r"Example\.limit must be of type int or None; got '3'"),
        ({"colour": "green"}, r"Example\.colour must be one of 'red', 'blue'; got 'green'"),
        ({"either": "blue"}, r"Example\.either must be one of 'red'; got 'blue'"),
        (
            {"mode": "gpu"},
            r"Example\.mode must be one of 'auto', 'cpu', a string matching cuda:\\d\+; got 'gpu'",
        ),
        ({"flag": "yes"}, r"Example\.flag must be of type bool; got 'yes'"),
        ({"sizes": [1, "2"]}, r"Example\.sizes must be a list of integers"),
        ({"names": ["a", 2]}, r"Example\.names must be a list of strings; got \['a', 2\]"),
        ({"paths": {"x": 3}}, r"Example\.paths\.x must be of type Path; got 3"),
    ],
)
def test_bad_values_are_refused_with_the_field_and_the_expectation(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Example(**kwargs)  # type: ignore[arg-type]


def test_prefix_names_the_fields() -> None:
    @dataclass(frozen=True)
    class Table:
        size: int = setting(1, minimum=1, expected="a positive size")

        def __post_init__(self) -> None:
            check_settings(self, prefix="train")

    with pytest.raises(ConfigError, match=r"^train\.size must be a positive size; got 0$"):
        Table(size=0)


def test_settings_from_mapping_refuses_unknown_keys_and_names_the_source() -> None:
    assert settings_from_mapping(Example, {"count": 4}, "file.toml [example]").count == 4
    with pytest.raises(
        ConfigError, match=r"file.toml \[example\]: unknown key\(s\) \['counts'\]; valid keys: .*'count'"
    ):
        settings_from_mapping(Example, {"counts": 4}, "file.toml [example]")
    with pytest.raises(ConfigError, match=r"^file.toml \[example\]: Example\.count must be >= 1; got 0$"):
        settings_from_mapping(Example, {"count": 0}, "file.toml [example]")
    with pytest.raises(ConfigError, match="must be a table of key = value pairs"):
        settings_from_mapping(Example, [1, 2], "file.toml [example]")
