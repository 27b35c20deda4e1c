"""One simulated vLLM pod: the OpenAI-compatible HTTP API (aiohttp) in front of a SimEngine.

Routes: /v1/completions, /v1/chat/completions (stream and not), /v1/models, /health,
/tokenize, /detokenize, /metrics, /version, /reset_prefix_cache, /v1/load_lora_adapter,
/v1/unload_lora_adapter, and the simulator's admin routes /sim/faults and /sim/state.
Every response carries `x-sim-pod: <name>`; `x-request-id` is echoed when sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from epp.sim.config import SimPodConfig, expand_port_template
from epp.sim.engine import RequestRejected, SimEngine, SimRequest
from epp.sim.kv_publisher import KVEventPublisher
from epp.sim.metrics import VllmMetrics
from epp.sim.sglang_metrics import SglangMetrics
from epp.tokenization.chat_template import ChatTemplateError
from epp.tokenization.factory import shared_prompt_tokenizer
from epp.tokenization.prompt import ChatPrompt, request_token_ids

log = logging.getLogger(__name__)

SIM_VERSION = "0.11.0+sim"
POD_HEADER = "x-sim-pod"
REQUEST_ID_HEADER = "x-request-id"
CACHED_TOKENS_HEADER = "x-sim-cached-tokens"
TRANSFERRED_TOKENS_HEADER = "x-sim-kv-transferred-tokens"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class ApiError(Exception):
    """An error answered in the OpenAI/vLLM error shape."""

    TYPES = {
        400: "BadRequestError",
        404: "NotFoundError",
        500: "InternalServerError",
        503: "ServiceUnavailableError",
    }

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def response(self, headers: dict[str, str], engine: str = "vllm") -> web.Response:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.TYPES.get(self.status, "APIError"),
            "param": self.param,
            "code": self.status,
        }
        # SGLang's ErrorResponse is flat with object="error" (its releases before the OpenAI
        # envelope); vLLM wraps it in {"error": ...}.
        body = {"object": "error", **error} if engine == "sglang" else {"error": error}
        return web.json_response(body, status=self.status, headers=headers)


class SimPod:
    """A simulated vLLM server on one port; `start()` binds, `stop()` releases everything."""

    def __init__(
        self, config: SimPodConfig, on_crash: Callable[[SimPod], Awaitable[None]] | None = None
    ) -> None:
        config.validate()
        self.config = config
        self.faults = config.faults
        # The model's tokenizer and chat template (--tokenizer DIR) make token counts, block
        # hashes and KV events equal a real vLLM's; "simple" is the fallback (with a warning).
        self.tokenizer = shared_prompt_tokenizer(config.tokenizer)
        self.lora_modules = dict(config.lora_modules)
        self.traceparents: deque[str] = deque(maxlen=64)  # W3C trace context received, newest last
        self._on_crash = on_crash
        self._runner: web.AppRunner | None = None
        self._started_at = time.monotonic()
        self._fault_changed = asyncio.Event()
        self._served_requests = 0
        self.crashed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = config.port
        self.engine: SimEngine
        self.metrics: VllmMetrics | SglangMetrics
        self.publisher: KVEventPublisher | None = None

    @property
    def name(self) -> str:
        return self.config.name or f"sim-{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def hostport(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def kv_events_endpoint(self) -> str | None:
        return None if self.publisher is None else self.publisher.endpoint

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.add_routes(
            [
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat_completions),
                web.get("/v1/models", self._models),
                web.get("/health", self._health),
                web.get("/ping", self._health),
                web.post("/tokenize", self._tokenize),
                web.post("/detokenize", self._detokenize),
                web.get("/metrics", self._metrics),
                web.get("/version", self._version),
                web.post("/reset_prefix_cache", self._reset_prefix_cache),
                web.post("/v1/load_lora_adapter", self._load_lora),
                web.post("/v1/unload_lora_adapter", self._unload_lora),
                web.get("/sim/faults", self._get_faults),
                web.post("/sim/faults", self._set_faults),
                web.get("/sim/state", self._state),
            ]
        )
        # handler_cancellation: a client disconnect cancels the handler, which aborts the
        # request in the engine (vLLM aborts on disconnect too).
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
            self.config.port = self.port
        if not self.config.name:
            self.config.name = f"sim-{self.port}"
        self._make_engine()
        self._started_at = time.monotonic()
        log.info("sim pod %s listening on %s (role=%s)", self.name, self.url, self.config.role)

    def _make_engine(self) -> None:
        cfg = self.config
        cache_info = {
            "block_size": str(cfg.block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": str(cfg.enable_prefix_caching),
            "gpu_memory_utilization": "0.9",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(cfg.num_gpu_blocks),
            "prefix_caching_hash_algo": cfg.prefix_caching_hash_algo,
        }
        if cfg.engine == "sglang":
            self.metrics = SglangMetrics(cfg.model_names[0], cfg.num_gpu_blocks * cfg.block_size, cfg.role)
        else:
            self.metrics = VllmMetrics(cfg.model_names[0], cfg.max_model_len, cfg.max_loras, cache_info)
        if cfg.kv_events_endpoint:
            topic = cfg.kv_events_topic.format(
                pod=self.name, model=cfg.model_names[0], host=cfg.host, port=self.port
            )
            self.publisher = KVEventPublisher(
                expand_port_template(cfg.kv_events_endpoint, self.port),
                topic=topic,
                bind=cfg.kv_events_bind,
                event_format=cfg.kv_events_format,
                replay_endpoint=(
                    expand_port_template(cfg.kv_events_replay_endpoint, self.port)
                    if cfg.kv_events_replay_endpoint
                    else None
                ),
            )
        self.engine = SimEngine(cfg, self.tokenizer, self.metrics, self.publisher)
        self.engine.start()

    async def stop(self) -> None:
        self._fault_changed.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if hasattr(self, "engine"):
            await self.engine.stop()
        if self.publisher is not None:
            await self.publisher.close()
            self.publisher = None

    async def restart(self) -> None:
        """Come back after a crash: empty engine and cache (AllBlocksCleared is published)."""
        await self.stop()
        self.crashed = False
        self._served_requests = 0
        await self.start()
        self.engine.reset_prefix_cache()

    def _background(self, coro: Awaitable[None], delay_s: float = 0.0) -> None:
        async def run() -> None:
            if delay_s:
                await asyncio.sleep(delay_s)
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def crash(self) -> None:
        self.crashed = True
        if self._on_crash is not None:
            await self._on_crash(self)
        else:
            log.error("sim pod %s crashing on injected fault", self.name)
            os._exit(3)

    # ------------------------------------------------------------------ helpers

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = {POD_HEADER: self.name}
        request_id = request.headers.get(REQUEST_ID_HEADER)
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        return headers

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as e:
            return e.response(self._headers(request), self.config.engine)
        if not response.prepared:
            response.headers.update(self._headers(request))
        return response

    async def _wait_while(self, condition: Callable[[], bool]) -> None:
        while condition():
            self._fault_changed.clear()
            await self._fault_changed.wait()

    def _starting(self) -> bool:
        return time.monotonic() - self._started_at < self.faults.startup_delay_s

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"Invalid JSON body: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object.")
        return body

    def _resolve_model(self, body: dict[str, Any]) -> tuple[str, str | None]:
        model = body.get("model")
        names = self.config.model_names
        if model is None:
            return names[0], None
        if not isinstance(model, str):
            raise ApiError(400, "model must be a string", "model")
        if model in names:
            return model, None
        if model in self.lora_modules:
            return model, model
        raise ApiError(404, f"The model `{model}` does not exist.", "model")

    async def _pre_inference_faults(self) -> None:
        f = self.faults
        if self.crashed:
            raise ApiError(503, "The simulated server crashed.")
        if self._starting():
            raise ApiError(503, "The simulated server is still starting.")
        self._served_requests += 1
        if f.crash_after_requests and self._served_requests > f.crash_after_requests:
            self._background(self.crash())
            raise ApiError(503, "The simulated server crashed.")
        if f.error_rate > 0 and not f.error_models and self.engine.rng.random() < f.error_rate:
            raise ApiError(f.error_status, "Injected fault: simulated engine error.")
        if f.hang_requests:
            await self._wait_while(lambda: self.faults.hang_requests)

    async def _model_faults(self, model: str) -> None:
        """Faults injected only for some models (FaultConfig.error_models / slow_models)."""
        f = self.faults
        if f.error_models and f.error_rate > 0 and model in f.error_models \
                and self.engine.rng.random() < f.error_rate:
            raise ApiError(f.error_status, f"Injected fault: simulated engine error for model {model}.")
        if f.slow_models_delay_s > 0 and model in f.slow_models:
            await asyncio.sleep(f.slow_models_delay_s)

    @staticmethod
    def _max_tokens(body: dict[str, Any], *keys: str) -> int | None:
        for key in keys:
            value = body.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ApiError(400, f"{key} must be an integer", key)
                return value
        return None

    @staticmethod
    def _priority(body: dict[str, Any]) -> int:
        """vLLM's `priority` request field (an int, default 0; lower is handled earlier)."""
        value = body.get("priority", 0)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(400, "priority must be an integer", "priority")
        return value

    def _kv_transfer_params(self, body: dict[str, Any]) -> dict[str, Any] | None:
        params = body.get("kv_transfer_params")
        if params is None:
            return None
        if not isinstance(params, dict):
            raise ApiError(400, "kv_transfer_params must be an object", "kv_transfer_params")
        return params

    async def _run(
        self,
        request: web.Request,
        body: dict[str, Any],
        prompt_ids: list[int],
        lora: str | None,
        max_tokens: int | None,
    ) -> SimRequest:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        traceparent = request.headers.get("traceparent")
        if traceparent:  # vLLM parents its request span on it; /sim/state shows what came
            self.traceparents.append(traceparent)
        arrival = time.monotonic()
        salt = body.get("cache_salt")
        try:
            sim_request = self.engine.make_request(
                request_id,
                prompt_ids,
                max_tokens,
                lora_name=lora,
                cache_salt=salt if isinstance(salt, str) else None,
                kv_transfer_params=self._kv_transfer_params(body),
                arrival=arrival,
                priority=self._priority(body),
            )
        except RequestRejected as e:
            raise ApiError(400, str(e)) from None
        overhead = self.config.latency.frontend_overhead_ms / 1000.0 * self.config.latency.time_scale
        if overhead > 0:
            await asyncio.sleep(overhead)
        self.engine.submit(sim_request)
        return sim_request

    def _usage(self, req: SimRequest) -> dict[str, Any]:
        n_out = len(req.output_token_ids)
        return {
            "prompt_tokens": req.num_prompt_tokens,
            "total_tokens": req.num_prompt_tokens + n_out,
            "completion_tokens": n_out,
            "prompt_tokens_details": {"cached_tokens": req.cached_tokens},
        }

    def _result_headers(self, request: web.Request, req: SimRequest) -> dict[str, str]:
        headers = self._headers(request)
        headers[CACHED_TOKENS_HEADER] = str(req.cached_tokens)
        headers[TRANSFERRED_TOKENS_HEADER] = str(req.transferred_tokens)
        return headers

    async def _collect(self, req: SimRequest) -> None:
        try:
            while await req.outputs.get() is not None:
                pass
        except asyncio.CancelledError:
            self.engine.abort(req)
            raise

    # ------------------------------------------------------------------ OpenAI API

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        await self._pre_inference_faults()
        body = await self._read_json(request)
        model, lora = self._resolve_model(body)
        await self._model_faults(model)
        try:
            prompt_ids = request_token_ids(self.tokenizer, {**body, "messages": None})
        except ValueError as e:
            raise ApiError(400, str(e), "prompt") from None
        max_tokens = self._max_tokens(body, "max_tokens")
        if max_tokens is None:
            max_tokens = 16  # OpenAI/vLLM default for /v1/completions
        req = await self._run(request, body, prompt_ids, lora, max_tokens)
        created = int(time.time())
        completion_id = f"cmpl-{req.request_id}"
        if body.get("stream"):
            return await self._stream(request, body, req, completion_id, created, model, chat=False)
        await self._collect(req)
        return web.json_response(
            {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "text": "".join(req.output_text),
                        "logprobs": None,
                        "finish_reason": req.finish_reason,
                        "stop_reason": None,
                        "prompt_logprobs": None,
                    }
                ],
                "usage": self._usage(req),
                "kv_transfer_params": req.kv_transfer_result,
            },
            headers=self._result_headers(request, req),
        )

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        await self._pre_inference_faults()
        body = await self._read_json(request)
        model, lora = self._resolve_model(body)
        await self._model_faults(model)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list", "messages")
        try:
            prompt_ids = self.tokenizer.chat_ids(ChatPrompt.from_body(body))
        except ValueError as e:  # ChatTemplateError included: the template or the messages
            raise ApiError(400, str(e), "messages") from None
        max_tokens = self._max_tokens(body, "max_completion_tokens", "max_tokens")
        req = await self._run(request, body, prompt_ids, lora, max_tokens)
        created = int(time.time())
        completion_id = f"chatcmpl-{req.request_id}"
        if body.get("stream"):
            return await self._stream(request, body, req, completion_id, created, model, chat=True)
        await self._collect(req)
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "".join(req.output_text),
                            "tool_calls": [],
                        },
                        "logprobs": None,
                        "finish_reason": req.finish_reason,
                        "stop_reason": None,
                    }
                ],
                "usage": self._usage(req),
                "prompt_logprobs": None,
                "kv_transfer_params": req.kv_transfer_result,
            },
            headers=self._result_headers(request, req),
        )

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        req: SimRequest,
        completion_id: str,
        created: int,
        model: str,
        chat: bool,
    ) -> web.StreamResponse:
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        continuous_usage = include_usage and bool(options.get("continuous_usage_stats"))
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [] if choice is None else [choice],
            }
            if usage is not None or (include_usage and choice is not None):
                payload["usage"] = usage
            return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

        try:
            # Headers go out at once, before the prefill, as vLLM's do: it answers a stream with
            # a StreamingResponse, whose headers uvicorn sends when the request is accepted. So
            # they cannot carry the prefix-cache result; a stream's usage does
            # (prompt_tokens_details.cached_tokens).
            response = web.StreamResponse(headers={**SSE_HEADERS, **self._headers(request)})
            await response.prepare(request)
            token = await req.outputs.get()
            if chat:
                first = {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                await response.write(chunk(first))
            while token is not None:
                # only the end-of-stream marker left: this is the last token
                done = req.finished and req.outputs.qsize() <= 1
                finish = req.finish_reason if done else None
                if chat:
                    choice = {
                        "index": 0,
                        "delta": {"content": token.text},
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                    }
                else:
                    choice = {
                        "index": 0,
                        "text": token.text,
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                    }
                await response.write(chunk(choice, self._usage(req) if continuous_usage else None))
                token = await req.outputs.get()
            if include_usage:
                await response.write(chunk(None, self._usage(req)))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.engine.abort(req)
            raise
        return response

    async def _models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": self.config.engine,
                "root": self.config.model,
                "parent": None,
                "max_model_len": self.config.max_model_len,
            }
            for name in self.config.model_names
        ]
        data += [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": self.config.engine,
                "root": path,
                "parent": self.config.model_names[0],
                "max_model_len": None,
            }
            for name, path in self.lora_modules.items()
        ]
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        if self.faults.hang_health:
            await self._wait_while(lambda: self.faults.hang_health)
        if self.crashed or self._starting():
            return web.Response(status=503)
        return web.Response(status=200)

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        self._resolve_model(body)
        # vLLM's TokenizeChatRequest / TokenizeCompletionRequest and their defaults.
        try:
            if "messages" in body:
                tokens = self.tokenizer.chat_ids(ChatPrompt.from_body(body))
            elif isinstance(body.get("prompt"), str):
                add_special = body.get("add_special_tokens", True)
                if not isinstance(add_special, bool):
                    raise ApiError(400, "add_special_tokens must be a boolean", "add_special_tokens")
                tokens = self.tokenizer.completion_ids(body["prompt"], add_special)
            else:
                raise ApiError(400, "tokenize needs a string 'prompt' or 'messages'", "prompt")
        except ChatTemplateError as e:
            raise ApiError(400, str(e), "messages") from None
        answer: dict[str, Any] = {"count": len(tokens), "max_model_len": self.config.max_model_len,
                                  "tokens": tokens}
        if body.get("return_token_strs"):
            answer["token_strs"] = [self.tokenizer.decode([t]) for t in tokens]
        return web.json_response(answer)

    async def _detokenize(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        self._resolve_model(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise ApiError(400, "tokens must be a list of integers", "tokens")
        return web.json_response({"prompt": self.tokenizer.decode(tokens)})

    async def _metrics(self, request: web.Request) -> web.Response:
        f = self.faults
        if f.metrics_hang:
            await self._wait_while(lambda: self.faults.metrics_hang)
        if f.metrics_error_rate > 0 and self.engine.rng.random() < f.metrics_error_rate:
            return web.Response(status=500, text="injected metrics failure\n")
        if f.metrics_garbage:
            return web.Response(text="vllm:num_requests_running{model_name= this is not prometheus text\n")
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": SIM_VERSION})

    async def _reset_prefix_cache(self, request: web.Request) -> web.Response:
        if not self.engine.reset_prefix_cache():
            raise ApiError(400, "Cannot reset the prefix cache while requests are running.")
        return web.Response(status=200)

    async def _load_lora(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str):
            raise ApiError(400, "lora_name and lora_path must be strings")
        if name in self.lora_modules:
            raise ApiError(400, f"The lora adapter '{name}' has already been loaded.")
        self.lora_modules[name] = path
        self.config.lora_modules[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        name = body.get("lora_name")
        if not isinstance(name, str) or name not in self.lora_modules:
            raise ApiError(404, f"The lora adapter '{name}' cannot be found.")
        del self.lora_modules[name]
        self.config.lora_modules.pop(name, None)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    # ------------------------------------------------------------------ simulator admin

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(dataclasses.asdict(self.faults))

    async def _set_faults(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        crash = body.pop("crash", False)
        try:
            self.faults.update(body)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        if "startup_delay_s" in body:
            self._started_at = time.monotonic()
        self._fault_changed.set()
        if crash:
            # after this response is sent
            self._background(self.crash(), delay_s=0.05)
        return web.json_response(dataclasses.asdict(self.faults))

    async def _state(self, request: web.Request) -> web.Response:
        state = self.engine.state()
        state.update(
            name=self.name,
            url=self.url,
            kv_events_endpoint=self.kv_events_endpoint,
            models=self.config.model_names,
            lora_modules=sorted(self.lora_modules),
            traceparents=list(self.traceparents),
        )
        return web.json_response(state)
