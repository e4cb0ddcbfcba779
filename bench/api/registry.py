"""The method-plugin registry.

A plugin is an :class:`~lorabench.api.layer.AdaptedLinear` subclass plus a config dataclass,
registered under a short name with :func:`register_method`. Every plugin is found the same
way, through the entry-point group ``lorabench.methods``: the in-tree ones (the
``lorabench.methods`` package) are declared in this project's ``pyproject.toml``, third-party
ones in theirs. An entry point may name a module that registers on import, or a
:class:`MethodSpec` object.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lorabench.errors import ConfigError, UnknownMethodError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lorabench.methods"


@dataclass(frozen=True)
class MethodSpec:
    """Everything the harness knows about one method.

    ``layer_cls(base_linear, config)`` adapts one ``nn.Linear``; ``layer_cls.param_count``
    is the closed-form trainable-parameter count of one adapted layer; ``size_knob`` is
    the config field a parameter budget tunes.
    """

    name: str
    config_cls: type
    layer_cls: type
    size_knob: str | None = "r"  # None: the method has no size knob (e.g. (IA)³)
    description: str = ""

    @property
    def mergeable(self) -> bool:
        return bool(self.layer_cls.mergeable)

    def adapt(self, linear, config):
        return self.layer_cls(linear, config)

    def param_count(self, config, d_in: int, d_out: int) -> int:
        return int(self.layer_cls.param_count(config, d_in, d_out))

    def default_config(self):
        return self.config_cls()

    def fields(self) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) of each config field, for `lorabench list`."""
        hints = typing.get_type_hints(self.config_cls)
        out = []
        for f in dataclasses.fields(self.config_cls):
            if f.default_factory is not dataclasses.MISSING:  # list/dict knobs
                default = f.default_factory()
            else:
                default = f.default if f.default is not dataclasses.MISSING else None
            out.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
        return out


_REGISTRY: dict[str, MethodSpec] = {}
_discovered = False


def register_method(
    name: str, *, config: type, size_knob: str | None = "r", description: str = ""
) -> Callable[[type], type]:
    """Class decorator: register an AdaptedLinear subclass under ``name`` with ``config``.

    The same layer class may be registered more than once with different config
    dataclasses (presets such as ``moe-lora`` and ``moe-lora-top2``).
    """

    def decorator(layer_cls: type) -> type:
        doc = description or _first_doc_line(layer_cls)
        if not doc:
            raise TypeError(
                f"method '{name}': {layer_cls.__name__} has no docstring; give the class one "
                "(its first line describes the method in `lorabench list`) or pass description="
            )
        add_method(MethodSpec(name, config, layer_cls, size_knob, doc))
        return layer_cls

    return decorator


def _first_doc_line(layer_cls: type) -> str:
    lines = (layer_cls.__doc__ or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def add_method(spec: MethodSpec) -> MethodSpec:
    if not dataclasses.is_dataclass(spec.config_cls):
        raise TypeError(
            f"method '{spec.name}': config must be a dataclass, got {spec.config_cls!r}"
        )
    names = {f.name for f in dataclasses.fields(spec.config_cls)}
    if spec.size_knob is not None and spec.size_knob not in names:
        raise TypeError(f"method '{spec.name}': size knob '{spec.size_knob}' is not a config field")
    for attr in ("param_count", "mergeable"):
        if not hasattr(spec.layer_cls, attr):
            raise TypeError(f"method '{spec.name}': layer class lacks '{attr}'")
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"method '{spec.name}' is already registered by {existing.layer_cls!r}")
    _REGISTRY[spec.name] = spec
    return spec


def _discover() -> None:
    """Load every plugin, once: in-tree and third-party ones alike come from entry points."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    load_entry_points()


def load_entry_points() -> list[str]:
    """Load every ``lorabench.methods`` entry point; returns the names it loaded."""
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the harness
            log.warning("could not load lorabench plugin %r (%s): %s", ep.name, ep.value, exc)
            continue
        if isinstance(obj, MethodSpec):
            add_method(obj)
        loaded.append(ep.name)
    return loaded


def available_methods() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownMethodError(f"unknown method '{name}'; known methods: {known}") from None


# --- typed config construction ---------------------------------------------------------


def build_config(method: str | MethodSpec, overrides: Mapping[str, Any] | None = None):
    """The method's config with ``overrides`` applied, each checked against its field type.

    String values (from ``--set key=value``) are parsed to the field's type; other values
    (from a suite file) must already have it. Errors name the field and what was expected.
    """
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    hints = typing.get_type_hints(spec.config_cls)
    known = [f.name for f in dataclasses.fields(spec.config_cls)]
    values = {}
    for key, raw in (overrides or {}).items():
        if key not in known:
            raise ConfigError(
                f"method '{spec.name}' has no config field '{key}'; fields: {', '.join(known)}"
            )
        values[key] = coerce(raw, hints[key], f"{spec.name}.{key}")
    try:
        return spec.config_cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method '{spec.name}': {exc}") from exc


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["r=8", "alpha=16"]`` → ``{"r": "8", "alpha": "16"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got '{item}'")
        out[key.strip()] = value.strip()
    return out


_NONE_WORDS = {"none", "null", ""}
_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert/check ``value`` against the annotation ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)
        ):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if isinstance(value, str) and (tp is dict or origin in (dict, list)):
        value = _parse_inline(value)  # from --set: a TOML inline table/array, or JSON
    if origin is list:
        (item_type,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_type)}, got {value!r}")
        return [coerce(v, item_type, where) for v in value]
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where}: expected a table, got {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value.strip()):
                return choice
        raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise ConfigError(f"{where}: expected a boolean (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value  # unannotated or exotic types: accept as given


def _parse_inline(text: str) -> Any:
    """``{alpha = 4}`` / ``[1, 2]`` (TOML, as in suite files) or JSON; the text if neither."""
    import json
    import tomllib

    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "{" + ", ".join(repr(a) for a in typing.get_args(tp)) + "}"
    if tp is type(None):
        return "None"
    if origin is list:
        return f"list[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))
