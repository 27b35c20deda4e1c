"""The plugin registry: type name -> plugin class.

This is the one piece of process-wide mutable state of the scheduler, and it is only written
at import time by the `@register_plugin` decorator. Plugin modules under
epp/scheduling/plugins/ are imported by `load_builtin_plugins()`, so adding a plugin file is
all it takes to register it.

A plugin class declares `type_name`, a `Params` dataclass (its parameters; fields in
snake_case, configured in camelCase or snake_case), and is built by
`cls(name=..., params=..., ctx=...)`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from epp.datastore.datastore import Datastore


class ConfigError(ValueError):
    """A configuration problem; the message names the file, the plugin and the field."""


@dataclass(slots=True)
class PluginContext:
    """What a plugin may use when it is built: the datastore and shared services.

    `services` holds process-wide collaborators keyed by name (for example the KV-event
    index under "kvevents.index" or a tokenizer under "tokenizer"); a plugin that needs one
    creates it there if missing so that several plugin instances share it.
    """

    datastore: Datastore
    services: dict[str, Any] = field(default_factory=dict)
    source: str = "<config>"  # config file name, for error messages


class PluginClass(Protocol):
    type_name: ClassVar[str]
    Params: ClassVar[type[Any]]

    def __call__(self, *, name: str, params: Any, ctx: PluginContext) -> Any: ...


_PLUGIN_TYPES: dict[str, Any] = {}

T = TypeVar("T")


def register_plugin(cls: type[T]) -> type[T]:
    """Class decorator: register a plugin class under its `type_name`."""
    type_name = getattr(cls, "type_name", None)
    if not isinstance(type_name, str) or not type_name:
        raise TypeError(f"{cls.__name__} must define a non-empty class attribute type_name")
    if not dataclasses.is_dataclass(getattr(cls, "Params", None)):
        raise TypeError(f"{cls.__name__} must define a dataclass Params (may be empty)")
    existing = _PLUGIN_TYPES.get(type_name)
    if existing is not None and existing is not cls:
        raise TypeError(f"plugin type {type_name!r} registered twice ({existing.__name__}, {cls.__name__})")
    _PLUGIN_TYPES[type_name] = cls
    return cls


def plugin_types() -> Mapping[str, Any]:
    load_builtin_plugins()
    return types.MappingProxyType(_PLUGIN_TYPES)


def plugin_class(type_name: str) -> Any | None:
    load_builtin_plugins()
    return _PLUGIN_TYPES.get(type_name)


_loaded = False


def plugin_of_kind(plugins: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    """The config's plugin `name`, which must be a `kind` (a runtime-checkable Protocol). A
    ValueError in the loader's words when `name` names no plugin, or one that is not `what`
    (e.g. "a saturation detector (utilization-detector, concurrency-detector)")."""
    plugin = plugins.get(name)
    if plugin is None:
        raise ValueError(f"{name!r} names no plugin (defined: {', '.join(plugins) or 'none'})")
    if not isinstance(plugin, kind):
        raise ValueError(f"plugin {name!r} is not {what}")
    return plugin


def load_builtin_plugins() -> None:
    """Import every module of epp.scheduling.plugins and epp.flowcontrol.plugins (each
    registers its classes)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import epp.flowcontrol.plugins as flow_pkg
    import epp.scheduling.plugins as pkg

    for package in (pkg, flow_pkg):  # flow control's detectors and policies share the registry
        for mod in pkgutil.iter_modules(package.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{mod.name}")


# Word boundaries of camelCase, keeping acronyms whole: speculativeTTL -> speculative_ttl,
# maxNumOfEndpoints -> max_num_of_endpoints, HTTPPort -> http_port.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _snake(key: str) -> str:
    return _CAMEL.sub("_", key).lower()


def parse_params(params_cls: type[T], raw: Mapping[str, Any] | None, where: str) -> T:
    """Build a Params dataclass from config, checking names and types.

    `where` prefixes every error, e.g. "config.yaml: plugin 'prefix' (prefix-cache-scorer)".
    A dataclass may define `validate(self) -> None` raising ValueError for range checks.
    """
    raw = dict(raw or {})
    hints = typing.get_type_hints(params_cls)
    fields = {f.name: f for f in dataclasses.fields(params_cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        fname = _snake(key)
        if fname not in fields:
            known = ", ".join(sorted(_camel(f) for f in fields)) or "none"
            raise ConfigError(f"{where}: unknown parameter {key!r} (known: {known})")
        kwargs[fname] = _coerce(value, hints[fname], f"{where}: parameter {key!r}")
    try:
        obj = params_cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    validate: Callable[[], None] | None = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    return obj


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where} has an invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if origin in (list, tuple, frozenset, set):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return value
