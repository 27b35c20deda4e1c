"""Scraping model-server /metrics into the datastore (vLLM and SGLang name mappings)."""

from epp.metricsscrape.http_client import AiohttpGetter, HttpGetter, HttpxGetter, ScrapeHttpError, make_getter
from epp.metricsscrape.mapping import (
    ENGINE_MAPPINGS,
    SGLANG,
    VLLM,
    MappingConfigError,
    MetricMapping,
    extract_metrics,
    mapping_from_config,
)
from epp.metricsscrape.parser import MetricsParseError, Sample, parse_labels, scan_families
from epp.metricsscrape.scraper import EndpointScraper, ScrapeConfig, ScraperManager

__all__ = [
    "ENGINE_MAPPINGS",
    "SGLANG",
    "VLLM",
    "AiohttpGetter",
    "EndpointScraper",
    "HttpGetter",
    "HttpxGetter",
    "MappingConfigError",
    "MetricMapping",
    "MetricsParseError",
    "Sample",
    "ScrapeConfig",
    "ScrapeHttpError",
    "ScraperManager",
    "extract_metrics",
    "make_getter",
    "mapping_from_config",
    "parse_labels",
    "scan_families",
]
