"""error_models: errors injected only into requests for some models (a canary)."""

import time

import httpx

from epp.cli import build_parser
from epp.sim.cli import build_configs
from epp.sim.cluster import simulated_pods

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def test_errors_only_for_the_listed_models() -> None:
    async with simulated_pods(1, time_scale=0.01, lora_modules={"canary": "/loras/canary"}) as cluster, \
            httpx.AsyncClient(timeout=10) as http:
        url = cluster.urls[0]
        r = await http.post(url + "/sim/faults", json={"error_rate": 1.0, "error_models": ["canary"]})
        assert r.status_code == 200 and r.json()["error_models"] == ["canary"]
        for _ in range(5):
            bad = await http.post(url + "/v1/completions", json={"model": "canary", "prompt": "x", "max_tokens": 1})
            assert bad.status_code == 500 and "canary" in bad.json()["error"]["message"]
            ok = await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
            assert ok.status_code == 200
        chat = await http.post(url + "/v1/chat/completions", json={
            "model": "canary", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
        assert chat.status_code == 500
        await http.post(url + "/sim/faults", json={"error_models": []})  # every model again
        assert (await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x"})).status_code == 500
        bad_type = await http.post(url + "/sim/faults", json={"error_models": [1]})
        assert bad_type.status_code == 400
        await http.post(url + "/sim/faults", json={"error_rate": 0.0, "slow_models": ["canary"],
                                                    "slow_models_delay_s": 0.3})
        t0 = time.monotonic()
        assert (await http.post(url + "/v1/completions", json={"model": "canary", "prompt": "x"})).status_code == 200
        slow = time.monotonic() - t0
        t0 = time.monotonic()
        assert (await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x"})).status_code == 200
        assert slow >= 0.3 > time.monotonic() - t0


def test_cli_flag() -> None:
    args = build_parser().parse_args(["sim", "--error-rate", "0.5", "--error-models", "a", "b",
                                      "--slow-models", "c", "--slow-models-delay-s", "0.2"])
    (cfg,) = build_configs(args)
    assert cfg.faults.error_models == ["a", "b"] and cfg.faults.error_rate == 0.5
    assert cfg.faults.slow_models == ["c"] and cfg.faults.slow_models_delay_s == 0.2
