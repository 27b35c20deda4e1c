"""A lean Prometheus text-format reader for the few metric families the EPP needs.

vLLM's /metrics page is tens of kilobytes (mostly histogram buckets) and we read it every
50 ms per pod, so a full parse of every family is wasted work. `scan_families` finds only
the requested sample names with `str.find` (C speed) and decodes just those lines; labels
are decoded lazily, only for the families that need them (info-style metrics).
tests/unit/metricsscrape/test_parser.py checks it against prometheus_client's parser and
docs/observability.md records the speed difference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

_LABEL_PAIR = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_SPECIAL_VALUES = {"NaN": math.nan, "+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf}


class MetricsParseError(ValueError):
    """A sample line of a requested family could not be decoded."""


@dataclass(slots=True)
class Sample:
    """One sample line: raw label text (between the braces, undecoded) and its value."""

    raw_labels: str
    value: float

    def labels(self) -> dict[str, str]:
        return parse_labels(self.raw_labels)


def parse_labels(raw: str) -> dict[str, str]:
    """Decode `a="x",b="y"` (escapes \\\\, \\", \\n honoured)."""
    labels: dict[str, str] = {}
    pos = 0
    end = len(raw)
    while pos < end:
        m = _LABEL_PAIR.match(raw, pos)
        if m is None:
            if raw[pos:].strip(" ,"):
                raise MetricsParseError(f"malformed labels {{{raw}}}")
            break
        value = m.group(2)
        if "\\" in value:
            value = re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e.group(0)], value)
        labels[m.group(1)] = value
        pos = m.end()
    return labels


def _parse_value(token: str, line: str) -> float:
    try:
        return float(token)
    except ValueError:
        special = _SPECIAL_VALUES.get(token)
        if special is None:
            raise MetricsParseError(f"bad sample value {token!r} in line {line!r}") from None
        return special


def scan_families(text: str, names: Iterable[str]) -> dict[str, list[Sample]]:
    """Samples of each requested metric name (exact sample name, e.g. `vllm:num_requests_waiting`).

    Names absent from the text map to an empty list. Comment lines (# HELP/# TYPE) and
    longer names sharing the prefix (`..._bucket`, `..._by_reason`) are skipped.
    """
    out: dict[str, list[Sample]] = {}
    text_len = len(text)
    for name in names:
        samples: list[Sample] = []
        name_len = len(name)
        start = 0
        while True:
            idx = text.find(name, start)
            if idx < 0:
                break
            start = idx + name_len
            if idx > 0 and text[idx - 1] != "\n":
                continue  # inside a comment or another name
            after = idx + name_len
            if after >= text_len:
                break
            nxt = text[after]
            line_end = text.find("\n", after)
            if line_end < 0:
                line_end = text_len
            if nxt == "{":
                close = _closing_brace(text, after + 1, line_end)
                raw_labels = text[after + 1 : close]
                rest = text[close + 1 : line_end]
            elif nxt == " " or nxt == "\t":
                raw_labels = ""
                rest = text[after:line_end]
            else:
                continue
            parts = rest.split()
            if not parts:
                raise MetricsParseError(f"sample without value: {text[idx:line_end]!r}")
            samples.append(Sample(raw_labels, _parse_value(parts[0], text[idx:line_end])))
            start = line_end
        out[name] = samples
    return out


def _closing_brace(text: str, pos: int, line_end: int) -> int:
    """Index of the `}` closing a label set, skipping braces inside quoted values."""
    close = text.find("}", pos, line_end)
    if close < 0:
        raise MetricsParseError(f"unterminated labels: {text[pos - 1 : line_end]!r}")
    segment = text[pos:close]
    if "\\" not in segment and segment.count('"') % 2 == 0:
        return close  # quotes balanced before the brace, so it is not inside a value
    # Slow path: a label value may contain '}' or escaped quotes; walk the characters.
    in_quote = False
    i = pos
    while i < line_end:
        c = text[i]
        if in_quote:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "}":
            return i
        i += 1
    raise MetricsParseError(f"unterminated labels: {text[pos - 1 : line_end]!r}")
