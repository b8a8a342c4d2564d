"""Convert plain mappings into dataclasses, collecting every problem with did-you-mean hints.

OmegaConf's structured configs stop at the first error and know nothing of registries;
this converter reports all unknown keys, missing fields and wrong types in one go.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from prunelab.errors import did_you_mean

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def to_dataclass(cls: type[T], data: Any, where: str, problems: list[str]) -> T | None:
    """Build ``cls`` from ``data``; append problems (prefixed with ``where``) instead of raising."""
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {type(data).__name__}")
        return None
    start = len(problems)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            problems.append(f"{where}: unknown key {key!r}.{did_you_mean(str(key), fields)} "
                            f"Valid keys: {', '.join(fields)}.")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], f"{where}.{name}", problems)
        elif field.default is _MISSING and field.default_factory is _MISSING:
            problems.append(f"{where}: missing required key {name!r}")
    if len(problems) > start:
        return None
    instance = cls(**values)
    check = getattr(instance, "check", None)
    if check is not None:
        problems.extend(f"{where}: {p}" for p in check())
    return instance


def _convert(hint: Any, value: Any, where: str, problems: list[str]) -> Any:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            trial: list[str] = []
            converted = _convert(option, value, where, trial)
            if not trial:
                return converted
        problems.append(f"{where}: {value!r} does not match {_name(hint)}")
        return None
    if origin is Literal:
        if value not in get_args(hint):
            choices = [str(c) for c in get_args(hint)]
            problems.append(f"{where}: {value!r} is not one of {', '.join(choices)}."
                            f"{did_you_mean(str(value), choices)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return None
        (item,) = get_args(hint)[:1] or (Any,)
        return [_convert(item, v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return None
        _, item = get_args(hint) or (str, Any)
        return {k: _convert(item, v, f"{where}.{k}", problems) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return to_dataclass(hint, value, where, problems)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        problems.append(f"{where}: expected {hint.__name__}, got {value!r}")
        return None
    if not isinstance(value, hint):
        problems.append(f"{where}: expected {hint.__name__}, got {value!r}")
        return None
    return value


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
