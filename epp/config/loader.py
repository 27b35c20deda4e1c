"""Load a GIE-compatible EndpointPickerConfig into a ready Scheduler.

    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    plugins:
    - type: prefix-cache-scorer          # registry type name
      name: prefix                       # instance name (default: the type)
      parameters: {blockSize: 64}        # the plugin's Params, camelCase or snake_case
    schedulingProfiles:
    - name: default
      plugins:
      - pluginRef: prefix
        weight: 3                        # scorers only; default 1

Wiring follows GIE's loader: a plugin's role in a profile (filter, scorer, picker) comes from
the Protocols it implements; a profile without a picker gets a max-score-picker; a config
without a profile handler gets a single-profile-handler; a config without profiles gets one
"default" profile with every filter, scorer and picker in plugin order. Every plugin that
implements PreRequest / ResponseReceived / PostResponse is called for every request, whether or not a profile
references it. Each error is a ConfigError naming the file, the plugin and the field.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from epp.flowcontrol.interfaces import SaturationDetector
from epp.scheduling.interfaces import (
    Filter,
    Picker,
    PluginBinder,
    PluginTimingObserver,
    PostResponse,
    PreRequest,
    ProfileHandler,
    ResponseReceived,
    Scorer,
)
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.registry import ConfigError, PluginContext, parse_params, plugin_types
from epp.scheduling.scheduler import Scheduler

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "ConfigError",
    "SchedulerConfig",
    "default_config_text",
    "load_scheduler_config",
    "parse_scheduler_config",
    "reload_scheduler_config",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "default-config.yaml"
# GIE's group, then the newer spellings used by GIE and llm-d; all share this schema.
API_VERSIONS = (
    "inference.networking.x-k8s.io/v1alpha1",
    "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1",
    "llm-d.ai/v1alpha1",
    "llm-d.ai/v1",
)
KIND = "EndpointPickerConfig"
DEFAULT_PROFILE = "default"
DEFAULT_PICKER = "max-score-picker"
DEFAULT_PROFILE_HANDLER = "single-profile-handler"
DEFAULT_SCORER_WEIGHT = 1.0
# Sections of the EndpointPickerConfig that belong to other components (flow control, data
# layer, ...): accepted so a GIE config loads, and exposed as SchedulerConfig.extra_sections.
OTHER_SECTIONS = (
    "featureGates", "saturationDetector", "dataLayer", "flowControl", "parser", "requestHandler",
    "requestControl", "data", "rollouts",
)
_TOP_LEVEL = ("apiVersion", "kind", "plugins", "schedulingProfiles", *OTHER_SECTIONS)
_PLUGIN_KEYS = ("type", "name", "parameters")
_PROFILE_KEYS = ("name", "plugins")
_PROFILE_PLUGIN_KEYS = ("pluginRef", "weight")


@dataclass(slots=True)
class PluginSpec:
    """One entry of `plugins:` after validation."""

    type_name: str
    name: str
    params: Any


@dataclass(slots=True)
class SchedulerConfig:
    """The loaded config: the scheduler to use and every plugin instance by name."""

    scheduler: Scheduler
    plugins: dict[str, Any]
    specs: dict[str, PluginSpec]
    source: str
    extra_sections: dict[str, Any] = field(default_factory=dict)

    @property
    def profiles(self) -> Mapping[str, SchedulerProfile]:
        return self.scheduler.profiles


def default_config_text() -> str:
    """The embedded default config (epp/config/default-config.yaml)."""
    return resources.files("epp.config").joinpath(DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")


def load_scheduler_config(
    path: str | Path | None,
    ctx: PluginContext,
    observer: PluginTimingObserver | None = None,
) -> SchedulerConfig:
    """Load the config file at `path` (None: the embedded default) and build the scheduler."""
    if path is None:
        return parse_scheduler_config(default_config_text(), ctx, DEFAULT_CONFIG_NAME, observer)
    source = str(path)
    text = _read_config(path)
    return parse_scheduler_config(text, ctx, source, observer)


def embedded_config_names() -> list[str]:
    """The configs shipped in epp/config (`--config` accepts their bare file names)."""
    return sorted(p.name for p in resources.files("epp.config").iterdir() if p.name.endswith(".yaml"))


def _read_config(path: str | Path) -> str:
    """A config file's text; a bare name of an embedded config (gie-default.yaml) that is not
    a file in the working directory reads the embedded one."""
    source = str(path)
    file = Path(path)
    if not file.exists() and file.name == source and source in embedded_config_names():
        return resources.files("epp.config").joinpath(source).read_text(encoding="utf-8")
    try:
        return file.read_text(encoding="utf-8")
    except OSError as e:
        embedded = ", ".join(embedded_config_names())
        raise ConfigError(f"{source}: cannot read the scheduler config: {e.strerror or e} "
                          f"(embedded configs: {embedded})") from None


def reload_scheduler_config(
    path: str | Path | None,
    ctx: PluginContext,
    previous: SchedulerConfig,
) -> SchedulerConfig:
    """Build a new scheduler from `path` for a live reload.

    Plugin instances whose name, type and parameters did not change are carried over from
    `previous`, so stateful plugins (the prefix-cache LRU) keep what they learned. The
    observer of the previous scheduler is kept. On error a ConfigError is raised and
    `previous` stays untouched: the caller keeps serving with it.
    """
    source = DEFAULT_CONFIG_NAME if path is None else str(path)
    text = default_config_text() if path is None else _read_config(path)
    return parse_scheduler_config(text, ctx, source, previous.scheduler.observer, previous=previous)


def parse_scheduler_config(
    text: str,
    ctx: PluginContext,
    source: str = "<config>",
    observer: PluginTimingObserver | None = None,
    previous: SchedulerConfig | None = None,
) -> SchedulerConfig:
    """Build the scheduler from config text; `source` names it in error messages."""
    ctx.source = source
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a mapping, got {type(raw).__name__}")
    _check_keys(raw, _TOP_LEVEL, f"{source}")
    api_version = raw.get("apiVersion")
    if api_version is not None and api_version not in API_VERSIONS:
        raise ConfigError(
            f"{source}: field 'apiVersion' must be one of {', '.join(API_VERSIONS)}; got {api_version!r}"
        )
    kind = raw.get("kind")
    if kind is not None and kind != KIND:
        raise ConfigError(f"{source}: field 'kind' must be {KIND!r}, got {kind!r}")

    specs, plugins = _build_plugins(raw.get("plugins"), ctx, source, previous)
    for name, plugin in plugins.items():
        if isinstance(plugin, PluginBinder):
            try:
                plugin.bind_plugins(plugins)
            except ValueError as e:
                raise ConfigError(f"{source}: plugin {name!r} ({specs[name].type_name}): {e}") from None
    profile_specs = _read_profiles(raw.get("schedulingProfiles"), specs, plugins, source)
    if not profile_specs:
        profile_specs = [(DEFAULT_PROFILE, [(n, None) for n, p in plugins.items() if _is_profile_member(p)])]

    handlers = [name for name, p in plugins.items() if isinstance(p, ProfileHandler)]
    if len(handlers) > 1:
        raise ConfigError(
            f"{source}: more than one profile handler configured ({', '.join(handlers)}); keep one"
        )
    if handlers:
        handler: ProfileHandler = plugins[handlers[0]]
    else:
        handler = _default_plugin(DEFAULT_PROFILE_HANDLER, specs, plugins, ctx, source)

    profiles = _build_profiles(profile_specs, specs, plugins, ctx, source)
    validate = getattr(handler, "validate_profiles", None)
    if validate is not None:
        try:
            validate(profiles)
        except ValueError as e:
            raise ConfigError(
                f"{source}: plugin {handler.name!r} ({handler.type_name}): {e}"
            ) from None

    scheduler = Scheduler(
        profiles,
        handler,
        pre_request_plugins=[p for p in plugins.values() if isinstance(p, PreRequest)],
        post_response_plugins=[p for p in plugins.values() if isinstance(p, PostResponse)],
        observer=observer,
        response_received_plugins=[p for p in plugins.values() if isinstance(p, ResponseReceived)],
    )
    extra = {k: raw[k] for k in OTHER_SECTIONS if k in raw}
    log.info(
        "%s: scheduler with handler %s and profiles %s",
        source, handler.name, "; ".join(repr(p) for p in profiles.values()),
    )
    return SchedulerConfig(scheduler, plugins, specs, source, extra)


# --- plugins ------------------------------------------------------------------------------
def _build_plugins(
    raw_plugins: Any, ctx: PluginContext, source: str, previous: SchedulerConfig | None
) -> tuple[dict[str, PluginSpec], dict[str, Any]]:
    if raw_plugins is None:
        raw_plugins = []
    if not isinstance(raw_plugins, list):
        raise ConfigError(f"{source}: field 'plugins' must be a list, got {type(raw_plugins).__name__}")
    known = plugin_types()
    specs: dict[str, PluginSpec] = {}
    plugins: dict[str, Any] = {}
    for i, entry in enumerate(raw_plugins):
        where = f"{source}: plugins[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping with 'type', got {entry!r}")
        type_name = entry.get("type")
        if not isinstance(type_name, str) or not type_name:
            raise ConfigError(f"{where}: field 'type' is required and must be a non-empty string")
        name = entry.get("name", type_name)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where} ({type_name}): field 'name' must be a non-empty string")
        where = f"{source}: plugin {name!r} ({type_name})"
        _check_keys(entry, _PLUGIN_KEYS, where)
        cls = known.get(type_name)
        if cls is None:
            raise ConfigError(
                f"{where}: unknown plugin type {type_name!r} (known: {', '.join(sorted(known))})"
            )
        if name in specs:
            raise ConfigError(
                f"{where}: duplicate plugin name {name!r} (also plugins entry of type "
                f"{specs[name].type_name}); give each instance a unique 'name'"
            )
        raw_params = entry.get("parameters")
        if raw_params is not None and not isinstance(raw_params, dict):
            raise ConfigError(f"{where}: field 'parameters' must be a mapping, got {raw_params!r}")
        params = parse_params(cls.Params, raw_params, where)
        spec = PluginSpec(type_name, name, params)
        specs[name] = spec
        plugins[name] = _reuse_or_build(cls, spec, ctx, where, previous)
    return specs, plugins


def _reuse_or_build(
    cls: Any, spec: PluginSpec, ctx: PluginContext, where: str, previous: SchedulerConfig | None
) -> Any:
    if previous is not None:
        old = previous.specs.get(spec.name)
        if old is not None and old.type_name == spec.type_name and old.params == spec.params:
            return previous.plugins[spec.name]
    try:
        return cls(name=spec.name, params=spec.params, ctx=ctx)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _default_plugin(
    type_name: str, specs: dict[str, PluginSpec], plugins: dict[str, Any], ctx: PluginContext, source: str
) -> Any:
    """Instantiate a default plugin under its type name (or reuse one configured so)."""
    if type_name in plugins:
        return plugins[type_name]
    cls = plugin_types()[type_name]
    spec = PluginSpec(type_name, type_name, parse_params(cls.Params, None, f"{source}: default {type_name}"))
    plugin = cls(name=type_name, params=spec.params, ctx=ctx)
    specs[type_name] = spec
    plugins[type_name] = plugin
    return plugin


def _is_profile_member(plugin: Any) -> bool:
    # Saturation detectors are filters too (GIE), but join a profile only when referenced; the
    # other flow-control plugins never: a fairness policy's pick(band) passes the runtime
    # Picker check (names only), and made `plugins: [round-robin-fairness-policy,
    # max-score-picker]` fail with "more than one picker".
    if type(plugin).__module__.startswith("epp.flowcontrol."):
        return False
    return isinstance(plugin, Filter | Scorer | Picker) and not isinstance(plugin, SaturationDetector)


# --- profiles -----------------------------------------------------------------------------
ProfileSpec = tuple[str, list[tuple[str, float | None]]]


def _read_profiles(
    raw_profiles: Any, specs: Mapping[str, PluginSpec], plugins: Mapping[str, Any], source: str
) -> list[ProfileSpec]:
    if raw_profiles is None:
        return []
    if not isinstance(raw_profiles, list):
        raise ConfigError(
            f"{source}: field 'schedulingProfiles' must be a list, got {type(raw_profiles).__name__}"
        )
    out: list[ProfileSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw_profiles):
        where = f"{source}: schedulingProfiles[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping with 'name' and 'plugins', got {entry!r}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: field 'name' is required and must be a non-empty string")
        where = f"{source}: scheduling profile {name!r}"
        _check_keys(entry, _PROFILE_KEYS, where)
        if name in seen:
            raise ConfigError(f"{where}: duplicate profile name")
        seen.add(name)
        refs = entry.get("plugins") or []
        if not isinstance(refs, list):
            raise ConfigError(f"{where}: field 'plugins' must be a list, got {type(refs).__name__}")
        members: list[tuple[str, float | None]] = []
        for j, ref in enumerate(refs):
            ref_where = f"{where}: plugins[{j}]"
            if not isinstance(ref, dict):
                raise ConfigError(f"{ref_where}: must be a mapping with 'pluginRef', got {ref!r}")
            plugin_name = ref.get("pluginRef")
            if not isinstance(plugin_name, str) or not plugin_name:
                raise ConfigError(f"{ref_where}: field 'pluginRef' is required and must be a string")
            _check_keys(ref, _PROFILE_PLUGIN_KEYS, ref_where)
            if plugin_name not in plugins:
                raise ConfigError(
                    f"{ref_where}: pluginRef {plugin_name!r} names no plugin "
                    f"(defined: {', '.join(plugins) or 'none'})"
                )
            plugin = plugins[plugin_name]
            ref_where = f"{where}: plugin {plugin_name!r} ({specs[plugin_name].type_name})"
            weight = ref.get("weight")
            if weight is not None:
                if isinstance(weight, bool) or not isinstance(weight, int | float):
                    raise ConfigError(f"{ref_where}: field 'weight' must be a number, got {weight!r}")
                if weight < 0 or weight != weight:
                    raise ConfigError(f"{ref_where}: field 'weight' must be >= 0, got {weight}")
                if not isinstance(plugin, Scorer):
                    log.warning("%s: 'weight' ignored, the plugin is not a scorer", ref_where)
            if not isinstance(plugin, Filter | Scorer | Picker):  # a referenced detector is a filter
                raise ConfigError(
                    f"{ref_where}: not a filter, scorer or picker, so it cannot be part of a "
                    "scheduling profile (profile handlers and pre-request/post-response plugins "
                    "only need to be listed under 'plugins')"
                )
            if any(existing == plugin_name for existing, _ in members):
                raise ConfigError(f"{ref_where}: referenced twice in the profile")
            members.append((plugin_name, None if weight is None else float(weight)))
        out.append((name, members))
    return out


def _build_profiles(
    profile_specs: list[ProfileSpec],
    specs: dict[str, PluginSpec],
    plugins: dict[str, Any],
    ctx: PluginContext,
    source: str,
) -> dict[str, SchedulerProfile]:
    profiles: dict[str, SchedulerProfile] = {}
    for name, members in profile_specs:
        filters: list[Filter] = []
        scorers: list[tuple[Scorer, float]] = []
        pickers: list[Picker] = []
        for plugin_name, weight in members:
            plugin = plugins[plugin_name]
            # One plugin may play several roles (e.g. a filter that also scores).
            if isinstance(plugin, Filter):
                filters.append(plugin)
            if isinstance(plugin, Scorer):
                scorers.append((plugin, DEFAULT_SCORER_WEIGHT if weight is None else weight))
            if isinstance(plugin, Picker):
                pickers.append(plugin)
        if len(pickers) > 1:
            raise ConfigError(
                f"{source}: scheduling profile {name!r}: more than one picker "
                f"({', '.join(p.name for p in pickers)}); keep one"
            )
        picker = pickers[0] if pickers else _default_plugin(DEFAULT_PICKER, specs, plugins, ctx, source)
        profiles[name] = SchedulerProfile(name, filters, scorers, picker)
    return profiles


def _check_keys(entry: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in entry:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown field {key!r} (allowed: {', '.join(allowed)})")
