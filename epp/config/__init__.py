"""Scheduler configuration: the GIE-compatible EndpointPickerConfig loader and its default."""

from epp.config.loader import (
    ConfigError,
    SchedulerConfig,
    load_scheduler_config,
    parse_scheduler_config,
    reload_scheduler_config,
)

__all__ = [
    "ConfigError",
    "SchedulerConfig",
    "load_scheduler_config",
    "parse_scheduler_config",
    "reload_scheduler_config",
]
