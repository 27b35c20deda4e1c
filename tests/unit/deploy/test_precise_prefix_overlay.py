"""deploy/precise-prefix (an overlay of deploy/gateway-api): the EPP gets the model's tokenizer from a read-only volume
and the precise scorer's settings equal the vLLM pods' flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from epp.config.loader import load_scheduler_config
from epp.datastore.datastore import Datastore
from epp.scheduling.registry import PluginContext
from tests.helpers.tokenizer_fixture import llama3_dir

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
OVERLAY = DEPLOY / "precise-prefix"


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _precise(config: dict[str, Any]) -> dict[str, Any]:
    (plugin,) = [p for p in config["plugins"] if p["type"] == "precise-prefix-cache-scorer"]
    return dict(plugin["parameters"])


def test_patches_target_base_resources_and_mount_the_tokenizer() -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../gateway-api", "../vllm"]  # the EPP and its pool, the model servers
    base = {(d["kind"], d["metadata"]["name"]) for p in (DEPLOY / "gateway-api").glob("*.yaml")
            for d in _load(p) if "metadata" in d}
    patches = [d for p in kustomization["patches"] for d in _load(OVERLAY / p["path"])]
    assert all((d["kind"], d["metadata"]["name"]) in base for d in patches)
    (deployment,) = [d for d in patches if d["kind"] == "Deployment"]
    (config_map,) = [d for d in patches if d["kind"] == "ConfigMap"]
    pod = deployment["spec"]["template"]["spec"]
    (mount,) = pod["containers"][0]["volumeMounts"]
    assert mount["readOnly"] is True and {v["name"] for v in pod["volumes"]} == {mount["name"]}
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert _precise(config)["tokenizer"] == mount["mountPath"]


def test_precise_settings_equal_the_vllm_flags_and_the_config_loads(tmp_path: Path) -> None:
    (config_map,) = _load(OVERLAY / "epp-config-precise.yaml")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    params = _precise(config)
    vllm = next(d for d in _load(DEPLOY / "vllm" / "vllm-deployment.yaml") if d["kind"] == "Deployment")
    container = vllm["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    tp = params["tokenProcessorConfig"]
    assert f"--block-size={tp['blockSize']}" in args
    assert f"--prefix-caching-hash-algo={tp['hashAlgo']}" in args
    assert env["PYTHONHASHSEED"] == tp["hashSeed"]
    events = json.loads(args[args.index("--kv-events-config") + 1])
    assert events["topic"] == params["kvEventsConfig"]["topicFilter"]
    assert events["endpoint"].endswith(f":{params['kvEventsConfig']['podDiscoveryConfig']['socketPort']}")
    # The config loads with the real loader once the volume's files are there (the fixture).
    params["tokenizer"] = llama3_dir()
    for plugin in config["plugins"]:
        if plugin["type"] == "precise-prefix-cache-scorer":
            plugin["parameters"] = params
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_scheduler_config(path, PluginContext(Datastore(), source=str(path)))
    assert "default" in loaded.profiles
