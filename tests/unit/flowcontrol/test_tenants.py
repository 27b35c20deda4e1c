"""API keys: hashed storage, one 401 for missing and wrong keys, tenant headers, reload
(file and mounted-Secret layout)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from epp.flowcontrol.tenants import ApiKeyAuth, KeysFileError, hash_key, load_keys, parse_keys
from epp.headers import FAIRNESS_ID, OBJECTIVE, canonicalize
from epp.server.errors import RequestError

KEYS = f"""
tenants:
- name: team-a
  objective: llama3-8b-instruct
  requestsPerMinute: 60
  tokensPerMinute: 1000
  keys: [sk-a-plain, "{hash_key('sk-a-hashed')}"]
- name: team-b
  keys: [sk-b]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("password") == "sha256:" + hashlib.sha256(b"password").hexdigest()


def test_keys_are_kept_only_as_digests(tmp_path: Path) -> None:
    table = load_keys(write(tmp_path / "keys.yaml", KEYS))
    stored = [d for entries in table.by_prefix.values() for d, _ in entries]
    assert len(stored) == 3 and all(len(d) == 32 for d in stored)
    assert b"sk-a-plain" not in b"".join(stored)
    assert table.tenants["team-a"].requests_per_minute == 60


@pytest.mark.parametrize("claimed", [{"x-gateway-inference-fairness-id": "someone-else"},
                                     {"x-llm-d-inference-fairness-id": "someone-else"},
                                     {"x-llm-d-inference-fairness-id": "x", "x-gateway-inference-fairness-id": "y"}])
def test_authenticate_sets_tenant_fairness_and_default_objective(tmp_path: Path, claimed: dict[str, str]) -> None:
    auth = ApiKeyAuth(write(tmp_path / "keys.yaml", KEYS))
    headers = {"authorization": "Bearer sk-a-hashed", "x-gateway-inference-tenant": "team-b", **claimed}
    canonicalize(headers)  # as the EPP does when it reads Envoy's headers, before authenticating
    assert auth.authenticate(headers).name == "team-a"
    assert headers["x-gateway-inference-tenant"] == "team-a"  # a client cannot claim another tenant
    # Nor another flow, under either header name (llm-d's current one or GIE's alias).
    assert headers[FAIRNESS_ID] == "team-a" and "x-gateway-inference-fairness-id" not in headers
    assert headers[OBJECTIVE] == "llama3-8b-instruct"
    for name in (OBJECTIVE, "x-gateway-inference-objective"):
        named = {"x-api-key": "sk-a-plain", name: "batch-sheddable"}
        canonicalize(named)
        auth.authenticate(named)
        assert named[OBJECTIVE] == "batch-sheddable"  # the request's own wins


@pytest.mark.parametrize("headers", [
    {}, {"authorization": "Bearer "}, {"authorization": "Bearer sk-nope"}, {"x-api-key": "sk-a"},
    {"authorization": "Basic sk-b"}, {"x-api-key": hash_key("sk-b")},
])
def test_missing_or_bad_key_is_one_and_the_same_401(tmp_path: Path, headers: dict[str, str]) -> None:
    auth = ApiKeyAuth(write(tmp_path / "keys.yaml", KEYS))
    with pytest.raises(RequestError) as exc:
        auth.authenticate(dict(headers))
    e = exc.value
    assert (e.status, e.code) == (401, "invalid_api_key")
    assert e.message == "Invalid or missing API key. Pass it as 'Authorization: Bearer <key>'."


@pytest.mark.parametrize(("text", "message"), [
    ("tenants: [{name: a}]", r"k.yaml: tenants\[0\].keys: a non-empty list"),
    ("tenants: [{keys: [x]}]", r"k.yaml: tenants\[0\].name: required"),
    ("tenants: [{name: a, keys: [x], requestsPerMinute: -1}]", r"tenants\[0\].requestsPerMinute: must be"),
    ("tenants: [{name: a, keys: ['sha256:abc']}]", r"tenants\[0\].keys\[0\]: 'sha256:' must be followed"),
    ("tenants: [{name: a, keys: [x]}, {name: b, keys: [x]}]", r"tenants\[1\].keys\[0\]: the same key"),
    ("tenants: [{name: a, keys: [x], rpm: 3}]", r"tenants\[0\]: unknown field 'rpm'"),
    ("keys: []", r"k.yaml: expected a mapping with 'tenants'"),
])
def test_bad_keys_file_names_file_and_field(text: str, message: str) -> None:
    with pytest.raises(KeysFileError, match=message):
        parse_keys(text, "k.yaml")


def test_reload_without_restart_and_broken_edit_keeps_old_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.yaml", KEYS)
    auth = ApiKeyAuth(path)
    write(path, "tenants: [{name: team-c, keys: [sk-c]}]\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert auth.reload_if_changed()
    assert auth.authenticate({"x-api-key": "sk-c"}).name == "team-c"
    with pytest.raises(RequestError):
        auth.authenticate({"x-api-key": "sk-b"})  # removed key stops working
    write(path, "tenants: [{name: broken}]\n")
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert not auth.reload_if_changed()
    assert auth.authenticate({"x-api-key": "sk-c"}).name == "team-c"


def test_mounted_secret_directory_with_kubelet_symlinks(tmp_path: Path) -> None:
    # kubelet's layout: <dir>/..<timestamp>/<file>, <dir>/..data -> ..<timestamp>, <dir>/<file> -> ..data/<file>
    secret = tmp_path / "secret"
    secret.mkdir()
    v1 = secret / "..2026_12_01_00_00_00.1"
    v1.mkdir()
    write(v1 / "keys.yaml", KEYS)
    (secret / "..data").symlink_to(v1.name)
    (secret / "keys.yaml").symlink_to("..data/keys.yaml")
    auth = ApiKeyAuth(secret)
    assert auth.authenticate({"x-api-key": "sk-b"}).name == "team-b"
    # An update swaps ..data atomically to a new timestamped directory.
    v2 = secret / "..2026_12_01_00_01_00.2"
    v2.mkdir()
    write(v2 / "keys.yaml", "tenants: [{name: team-d, keys: [sk-d]}]\n")
    (secret / "..data_tmp").symlink_to(v2.name)
    os.replace(secret / "..data_tmp", secret / "..data")
    assert auth.reload_if_changed()
    assert auth.authenticate({"x-api-key": "sk-d"}).name == "team-d"
