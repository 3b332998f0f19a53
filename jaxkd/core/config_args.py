"""Strict parsing of the ``:arg`` in ``--config configs/<family>/<experiment>.py:arg``.

Configs are ``get_config(arg=None)`` functions. ``arg`` is a comma-separated list of bare
flags and ``key=value`` options, e.g. ``smoke``, ``seed=3``, ``smoke,seed=3,teacher=resnet8x4``:

    def get_config(arg=None):
        args = parse_config_arg(arg, flags=("smoke",), defaults={"seed": 0, "teacher": "resnet8x4"})
        check_choice("teacher", args.teacher, MODELS)
        ...

Everything that is not understood is an error: unknown flags and keys, a flag given a value,
a key without one, duplicates, and values that do not parse as the type of the default. In
particular ``flag=False`` never turns into ``True`` (the ``bool("False") == True`` bug).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ConfigArgs", "check_choice", "parse_config_arg"]

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_SUPPORTED = (bool, int, float, str)


class ConfigArgs(types.SimpleNamespace):
    """The parsed arg: one attribute per flag (bool) and per key (typed like its default).

    Read-only; ``as_dict()`` gives a plain dict, e.g. to store in the config.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ConfigArgs is read-only; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ConfigArgs is read-only; cannot delete {name!r}")

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def parse_config_arg(
    arg: str | None,
    *,
    flags: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    config_path: str | None = None,
) -> ConfigArgs:
    """Parses ``arg`` (e.g. ``"smoke,seed=3"``) against the allowed ``flags`` and ``defaults``.

    Args:
        arg: the string after the ``:`` of ``--config``, or None/"" for "use the defaults".
            Items are separated by commas; whitespace around items, keys and values is ignored.
        flags: bare words allowed in ``arg``; each becomes an attribute that is True iff present.
        defaults: ``key -> default``. The given value is parsed as the type of the default:
            ``bool`` accepts only true/false/1/0/yes/no (any case); ``int`` accepts only
            integers ("3.5" is an error); ``float`` accepts anything ``float()`` does; ``str``
            any non-empty text.
        config_path: the config file named in the example of error messages. By default it is
            the file of the caller (shortened to start at ``configs/`` when it lies under one).

    Returns:
        A read-only ``ConfigArgs`` with one attribute per flag and per key.

    Raises:
        ValueError: naming the offending item, listing the valid flags and keys (with their
            defaults) and giving an example ``--config ...:...`` argument.
        TypeError: if a default is not a bool, int, float or str (a bug in the config).
    """
    flags = tuple(flags)
    defaults = dict(defaults or {})
    _check_spec(flags, defaults)
    if config_path is None:
        config_path = _caller_file()

    def fail(item: str, problem: str) -> ValueError:
        return ValueError(
            f"Bad config arg item {item!r} in {arg!r}: {problem}.\n"
            + _usage(flags, defaults, config_path)
        )

    values: dict[str, Any] = {flag: False for flag in flags}
    values.update(defaults)
    seen: set[str] = set()
    items = arg.split(",") if arg and arg.strip() else []
    for raw_item in items:
        item = raw_item.strip()
        if not item:
            raise fail(raw_item, "empty item (stray comma?)")
        name, has_value, value = (part.strip() for part in item.partition("="))
        if not name:
            raise fail(item, "missing name before '='")
        if name in seen:
            raise fail(item, f"{name!r} is given more than once")
        seen.add(name)
        if name in flags:
            if has_value:
                raise fail(item, f"{name!r} is a flag and takes no value; write just '{name}'")
            values[name] = True
        elif name in defaults:
            if not has_value:
                raise fail(item, f"{name!r} needs a value, e.g. '{name}={_show(defaults[name])}'")
            try:
                values[name] = _coerce(value, defaults[name])
            except ValueError as e:
                raise fail(item, f"{e}") from None
        else:
            kind = "key" if has_value else "flag"
            raise fail(item, f"unknown {kind} {name!r}")
    return ConfigArgs(**values)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raises ValueError unless ``value`` is one of ``choices`` (a registry dict works too)."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(
            f"{name}={value!r} is not valid; choose one of: {', '.join(str(c) for c in choices)}"
        )


def _check_spec(flags: tuple[str, ...], defaults: dict[str, Any]) -> None:
    for name in (*flags, *defaults):
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(f"config arg names must be identifiers, got {name!r}")
    if len(set(flags)) != len(flags):
        raise TypeError(f"duplicate flags in {flags!r}")
    if both := set(flags) & set(defaults):
        raise TypeError(f"names cannot be both a flag and a key: {sorted(both)}")
    for key, default in defaults.items():
        if type(default) not in _SUPPORTED:
            raise TypeError(
                f"default for {key!r} must be a bool, int, float or str, "
                f"got {type(default).__name__}"
            )


def _coerce(text: str, default: Any) -> Any:
    kind = type(default)
    if not text:
        raise ValueError(f"empty value; expected a {kind.__name__}")
    if kind is bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{text!r} is not a bool; use true/false, 1/0 or yes/no")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an int") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a float") from None
    return text


def _show(value: Any) -> str:
    """A default as it would be typed after ``key=``."""
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "''"
    return str(value)


def _usage(flags: tuple[str, ...], defaults: dict[str, Any], config_path: str) -> str:
    flag_text = ", ".join(flags) if flags else "(none)"
    key_text = (
        ", ".join(f"{k}={_show(v)} ({type(v).__name__})" for k, v in defaults.items()) or "(none)"
    )
    example = [*flags[:1], *(f"{k}={_show(v)}" for k, v in list(defaults.items())[:1])]
    lines = [f"Valid flags: {flag_text}", f"Valid keys (defaults): {key_text}"]
    if example:
        lines.append(f"Example: --config {config_path}:{','.join(example)}")
    return "\n".join(lines)


def _caller_file() -> str:
    """The config file that called ``parse_config_arg``, as ``configs/...`` when possible."""
    try:
        # Frame 0 is this function, 1 is parse_config_arg, 2 its caller.
        path = sys._getframe(2).f_globals.get("__file__")
    except ValueError:
        path = None
    if not path:
        return "configs/<family>/<experiment>.py"
    path = os.path.normpath(path)
    parts = path.split(os.sep)
    if "configs" in parts:
        index = len(parts) - 1 - parts[::-1].index("configs")
        return "/".join(parts[index:])
    return path
