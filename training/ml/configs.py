"""Config dataclasses as the one schema of a setting: the run-settings form, the command
line of every method and a queued job's pinned config all read the same dataclass.

A config is a `@dataclass` whose fields carry their documentation as the string literal
under each field (the house style), a type (`int`, `float`, `bool`, `str`, a `Literal`
of strings, or one of those `| None`), the range of a number or a check of a string
declared on the field (`bounded`: the one place the form's min/max, the command line,
the API and a pinned job read them from), and an optional `validate()` for the rules
that join two fields (`require(..., field=...)`). Every problem of a set of values is
reported at once (`ConfigErrors`), each naming its field.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value is unusable; the message names the field, `field` says which one
    (None: the config as a whole)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @property
    def reason(self) -> str:
        """The message without its leading field name, for showing next to the field."""
        message = str(self)
        return message.removeprefix(f"{self.field}: ") if self.field else message


class ConfigErrors(ConfigError):
    """Every problem of one set of values, each a ConfigError naming its field."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(str(error) for error in errors))
        self.errors = errors


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The values a number field takes; None: no bound on that side."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    """Exclusive lower bound (a learning rate of 0 trains nothing)."""
    below: float | None = None
    """Exclusive upper bound."""

    def refusal(self, name: str, value: float) -> str | None:
        """Why `value` is out of range, or None."""
        if self.minimum is not None and value < self.minimum:
            return f"{name} must be at least {self.minimum:g}, not {value:g}"
        if self.above is not None and value <= self.above:
            return f"{name} must be above {self.above:g}, not {value:g}"
        if self.maximum is not None and value > self.maximum:
            return f"{name} must be at most {self.maximum:g}, not {value:g}"
        if self.below is not None and value >= self.below:
            return f"{name} must be below {self.below:g}, not {value:g}"
        return None

    @property
    def low(self) -> float | None:
        """The lowest value a form's input offers (its `min`)."""
        return self.minimum if self.minimum is not None else self.above

    @property
    def high(self) -> float | None:
        return self.maximum if self.maximum is not None else self.below


UNBOUNDED = Bounds()
StringCheck = Callable[[str], "str | None"]
"""Why a string value is unusable (the message names what is allowed), or None."""


def bounded(default: Any = dataclasses.MISSING, *, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, below: float | None = None, check: StringCheck | None = None) -> Any:
    """A dataclass field with its range (numbers) or its check (strings) declared on it:
    `learning_rate: float = bounded(5e-5, above=0, maximum=1e-2)`."""
    metadata = {"bounds": Bounds(minimum, maximum, above, below), "check": check}
    return dataclasses.field(default=default, metadata=metadata)


def bounds_of(field: dataclasses.Field) -> Bounds:
    return field.metadata.get("bounds", UNBOUNDED)


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """What a form or a command line needs to know about one config field."""

    name: str
    kind: type  # int, float, bool or str
    default: Any
    optional: bool
    choices: tuple[str, ...] | None
    doc: str
    bounds: Bounds = UNBOUNDED
    check: StringCheck | None = None

    def refusal(self, value: Any) -> str | None:
        """Why an already typed value is out of the field's range or fails its check."""
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            return self.bounds.refusal(self.name, value)
        if isinstance(value, str) and self.check is not None:
            return self.check(value)
        return None


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
        specs.append(FieldSpec(field.name, kind, default, optional, choices, docs.get(field.name, ""),
                               bounds_of(field), field.metadata.get("check")))
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
        raise ConfigError(f"{spec.name}: a value is required", spec.name)
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
        raise ConfigError(f"{spec.name}: {error}", spec.name) from None
    if spec.choices is not None and parsed not in spec.choices:
        raise ConfigError(f"{spec.name}: {parsed!r} is not one of {', '.join(spec.choices)}", spec.name)
    if why := spec.refusal(parsed):
        raise ConfigError(why, spec.name)
    return parsed


def config_from_dict(config_class: type, values: dict[str, Any], strict: bool = True):
    """A validated config from plain values (missing fields take their defaults), or
    ConfigErrors with every problem at once: each field's type and range, then (when
    every field is fine on its own) the config's `validate()` rules. With `strict`, an
    unknown key is an error: a typo must not be silently ignored."""
    specs = {spec.name: spec for spec in field_specs(config_class)}
    errors = [ConfigError(f"unknown setting for {config_class.__name__}: {name}", name)
              for name in sorted(set(values) - set(specs))] if strict else []
    parsed = {}
    for name, value in values.items():
        if name in specs:
            try:
                parsed[name] = coerce(specs[name], value)
            except ConfigError as error:
                errors.append(error)
    if errors:
        raise ConfigErrors(errors)
    config = config_class(**parsed)
    validate = getattr(config, "validate", None)
    if validate is not None:
        with collected_requirements() as broken:
            try:
                validate()
            except ConfigError as error:
                broken.append(error)
            except ValueError as error:
                broken.append(ConfigError(str(error)))
        if broken:
            raise ConfigErrors(broken)
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


_requirements: ContextVar[list[ConfigError] | None] = ContextVar("requirements", default=None)


@contextmanager
def collected_requirements() -> Iterator[list[ConfigError]]:
    """While open, `require` adds what fails to the list instead of raising, so that one
    `validate()` reports every broken rule."""
    broken: list[ConfigError] = []
    token = _requirements.set(broken)
    try:
        yield broken
    finally:
        _requirements.reset(token)


def require(condition: bool, message: str, field: str | None = None) -> None:
    """For `validate()` methods: a ConfigError(message) about `field` unless the
    condition holds (raised, or collected inside `collected_requirements`)."""
    if condition:
        return
    error = ConfigError(message, field)
    broken = _requirements.get()
    if broken is None:
        raise error
    broken.append(error)


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


# Limits shared by the configs' fields (`bounded`): far past any setting that trains
# well here, short of values that only fail minutes into a job (a learning rate of 1e9
# makes NaN weights; 100,000 new tokens per answer fill any GPU).
MAX_LEARNING_RATE = 1e-2
MAX_EPOCHS = 100
MAX_BATCH = 4096
MAX_NEW_TOKENS = 4096
"""New tokens per sampled answer."""
MAX_SEQUENCE = 8192
"""Prompt plus answer tokens a training pass reads."""
MAX_LORA_RANK = 512
MAX_LORA_ALPHA = 4096
MAX_TEMPERATURE = 10.0
MAX_SEED = 2**32 - 1
