"""A validator for the OpenAPI v3 subset Kubernetes CRD schemas use (structural schemas).

Supported: type (object, array, string, integer, number, boolean), properties, required,
additionalProperties, items, enum, minimum, maximum, minLength, maxLength, pattern,
minItems, maxItems, minProperties, maxProperties, x-kubernetes-preserve-unknown-fields,
x-kubernetes-int-or-string, and the x-kubernetes-validations rules listed in CEL_RULES.
Stricter than the API server in one way on purpose: unknown fields are errors (the API
server would silently prune them, hiding typos in manifests).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# The CEL rules used in deploy/crds, as Python predicates. An unknown rule is an error, so
# adding a rule to a CRD forces adding its meaning here.
CEL_RULES: dict[str, Callable[[Any], bool]] = {
    "self.all(p1, self.exists_one(p2, p1.number==p2.number))":
        lambda ports: len({p.get("number") for p in ports}) == len(ports),
    "self.kind != 'Service' || has(self.port)":
        lambda ref: ref.get("kind", "Service") != "Service" or "port" in ref,
}

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """All violations of `schema` by `value`, each prefixed with its JSON path."""
    errors: list[str] = []
    where = path or "<root>"
    if schema.get("x-kubernetes-int-or-string"):
        if not (_TYPES["integer"](value) or isinstance(value, str)):
            errors.append(f"{where}: must be an integer or a string, got {value!r}")
        return errors
    typ = schema.get("type")
    if typ is not None:
        if typ not in _TYPES:
            return [f"{where}: schema uses unsupported type {typ!r}"]
        if not _TYPES[typ](value):
            return [f"{where}: must be {typ}, got {type(value).__name__} {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not one of {schema['enum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            errors.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > maximum {schema['maximum']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors.extend(validate(item, schema["items"], f"{path}[{i}]"))
    if isinstance(value, dict):
        errors.extend(_validate_object(value, schema, path))
    for rule in schema.get("x-kubernetes-validations", []):
        predicate = CEL_RULES.get(rule["rule"])
        if predicate is None:
            errors.append(f"{where}: CEL rule {rule['rule']!r} unknown to this validator")
        elif not errors and not predicate(value):
            errors.append(f"{where}: {rule.get('message', rule['rule'])}")
    return errors


def _validate_object(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    where = path or "<root>"
    for key in schema.get("required", []):
        if key not in value:
            errors.append(f"{where}: required field {key!r} missing")
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        errors.append(f"{where}: fewer than {schema['minProperties']} properties")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(f"{where}: more than {schema['maxProperties']} properties")
    props: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    free_form = schema.get("x-kubernetes-preserve-unknown-fields") or (not props and extra is None)
    for key, sub in value.items():
        sub_path = f"{path}.{key}" if path else key
        if key in props:
            errors.extend(validate(sub, props[key], sub_path))
        elif isinstance(extra, dict):
            errors.extend(validate(sub, extra, sub_path))
        elif not free_form and extra is not True:
            errors.append(f"{sub_path}: unknown field")
    return errors


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """Nodes without a type (the API server rejects non-structural CRD schemas)."""
    where = path or "<root>"
    if schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    problems = [] if "type" in schema else [f"{where}: no type"]
    for key, sub in schema.get("properties", {}).items():
        problems.extend(structural_problems(sub, f"{path}.{key}" if path else key))
    if isinstance(schema.get("items"), dict):
        problems.extend(structural_problems(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        problems.extend(structural_problems(schema["additionalProperties"], f"{path}.*"))
    return problems
