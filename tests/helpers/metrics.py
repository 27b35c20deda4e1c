"""Prometheus samples as a scraper sees them: a registry's text exposition, parsed back by
prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


def scraped_samples(registry: CollectorRegistry) -> dict[tuple[str, Labels], float]:
    """{(sample name, sorted labels): value} of every sample `registry` exposes."""
    return text_samples(generate_latest(registry).decode())


def text_samples(text: str) -> dict[tuple[str, Labels], float]:
    """{(sample name, sorted labels): value} of every sample of a text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples}
