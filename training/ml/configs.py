"""Config dataclasses as the one schema of a setting: the run-settings form, the command
line of every method and a queued job's pinned config all read the same dataclass.

A config is a `@dataclass` whose fields carry their documentation as the string literal
under each field (the house style), a type (`int`, `float`, `bool`, `str`, a `Literal`
of strings, or one of those `| None`), and an optional `validate()` that raises
`ConfigError` for values the types allow but the algorithm does not.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value is unusable; the message names the field."""


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """What a form or a command line needs to know about one config field."""

    name: str
    kind: type  # int, float, bool or str
    default: Any
    optional: bool
    choices: tuple[str, ...] | None
    doc: str


@cache
def field_docs(config_class: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for statement, following in zip(body, body[1:], strict=False):
            if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


@cache
def field_specs(config_class: type) -> tuple[FieldSpec, ...]:
    hints = typing.get_type_hints(config_class)
    docs = field_docs(config_class)
    specs = []
    for field in dataclasses.fields(config_class):
        kind, optional, choices = unpack_type(hints[field.name], f"{config_class.__name__}.{field.name}")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        specs.append(FieldSpec(field.name, kind, default, optional, choices, docs.get(field.name, "")))
    return tuple(specs)


def unpack_type(hint, where: str) -> tuple[type, bool, tuple[str, ...] | None]:
    """(base type, may be None, allowed strings) of a field's annotation."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"{where}: only `T | None` unions are supported")
        hint = args[0]
    if typing.get_origin(hint) is Literal:
        return str, optional, tuple(typing.get_args(hint))
    if hint not in (int, float, bool, str):
        raise TypeError(f"{where}: unsupported field type {hint!r}")
    return hint, optional, None


def coerce(spec: FieldSpec, value: Any) -> Any:
    """`value` as the field's type, or ConfigError. Strings (from a form or a command line)
    are parsed; a bool is never silently an int."""
    if value is None or (isinstance(value, str) and value.strip() == "" and spec.kind is not str):
        if spec.optional:
            return None
        raise ConfigError(f"{spec.name}: a value is required")
    try:
        if spec.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"{value!r} is not true or false")
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a {spec.kind.__name__}")
        if spec.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{value!r} is not a whole number")
            parsed = int(value) if not isinstance(value, str) else int(value.strip())
        elif spec.kind is float:
            parsed = float(value)
            if parsed != parsed or parsed in (float("inf"), float("-inf")):
                raise ValueError("not a finite number")
        else:
            parsed = str(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{spec.name}: {error}") from None
    if spec.choices is not None and parsed not in spec.choices:
        raise ConfigError(f"{spec.name}: {parsed!r} is not one of {', '.join(spec.choices)}")
    return parsed


def config_from_dict(config_class: type, values: dict[str, Any], strict: bool = True):
    """A validated config from plain values (missing fields take their defaults). With
    `strict`, an unknown key is an error: a typo must not be silently ignored."""
    specs = {spec.name: spec for spec in field_specs(config_class)}
    unknown = set(values) - set(specs)
    if unknown and strict:
        raise ConfigError(f"unknown setting(s) for {config_class.__name__}: {', '.join(sorted(unknown))}")
    parsed = {name: coerce(specs[name], value) for name, value in values.items() if name in specs}
    config = config_class(**parsed)
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return config


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


SettingNames = Mapping[str, str]
"""Config field → the name of the deployment setting (prefloop/settings.py, read from the
environment) that gives the field its default for a new run. Names only: the ML code
never reads Django's settings; the training app looks the names up (training/services/
runs.py). A name written "not NAME" gives a bool field the opposite of the setting."""


def values_from_settings(config_class: type, names: SettingNames, read: Callable[[str], Any]) -> dict[str, Any]:
    """The config values the named settings give, `read(name)` looking a setting up.
    Settings come from environment variables, which cannot say None: for a field that
    may be None, a setting of 0 means None (PREFLOOP_PPO_EPISODES=0: one episode per
    prompt, PREFLOOP_RM_LEARNING_RATE=0: the learning rate picked for LoRA or not)."""
    specs = {spec.name: spec for spec in field_specs(config_class)}
    values = {}
    for name, setting in names.items():
        if name not in specs:
            raise ConfigError(f"{config_class.__name__} has no field {name!r} for the setting {setting}")
        negated = setting.startswith("not ")
        value = read(setting.removeprefix("not "))
        if negated:
            if specs[name].kind is not bool:
                raise ConfigError(f"{name}: only a bool field can take the opposite of a setting ({setting})")
            value = not value
        values[name] = None if specs[name].optional and value == 0 and not isinstance(value, bool) else value
    return values


def require(condition: bool, message: str) -> None:
    """For `validate()` methods: raise ConfigError(message) unless the condition holds."""
    if not condition:
        raise ConfigError(message)


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per field, with the field's doc as help."""
    group = parser.add_argument_group(config_class.__name__)
    for spec in field_specs(config_class):
        if spec.name in skip:
            continue
        group.add_argument(f"--{spec.name.replace('_', '-')}", dest=f"config_{spec.name}", default=None,
                           choices=spec.choices, metavar=None if spec.choices else spec.kind.__name__.upper(),
                           help=f"{spec.doc} (default: {spec.default})".replace("%", "%%"))  # argparse formats help


def config_from_arguments(config_class: type, arguments: argparse.Namespace, **fixed):
    values = {spec.name: getattr(arguments, f"config_{spec.name}") for spec in field_specs(config_class)
              if getattr(arguments, f"config_{spec.name}", None) is not None}
    return config_from_dict(config_class, {**values, **fixed})
