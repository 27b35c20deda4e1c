"""Kubernetes resource quantities ("1Gi", "500M", "1k") and Go durations ("30s", "1m30s",
"200ms"), the value formats of GIE's flowControl section."""

from __future__ import annotations

import re

_SUFFIX = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?\s*$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_quantity(value: object) -> int:
    """A non-negative integer quantity; raises ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"must be a quantity such as 100, '1k' or '1Gi', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value
    if isinstance(value, float) and value >= 0 and value == int(value):
        return int(value)
    if isinstance(value, str):
        m = _QUANTITY.match(value)
        if m:
            number = float(m.group(1)) * _SUFFIX[m.group(2) or ""]
            if number == int(number):
                return int(number)
    raise ValueError(f"must be a quantity such as 100, '1k', '500M' or '1Gi', got {value!r}")


def parse_duration(value: object) -> float:
    """Seconds from a Go duration string ("1m30s", "200ms") or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration such as '30s' or '200ms', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0.0
        pos, total = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        else:
            if pos == len(text) and pos > 0:
                return total
    raise ValueError(f"must be a duration such as '30s', '1m30s' or '200ms', got {value!r}")
