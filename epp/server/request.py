"""Turn the request body of an OpenAI-compatible call into an LLMRequest (or a RequestError).

Only the fields the scheduler needs are decoded (msgspec skips the rest without building
Python objects for them), so a large body costs one C-level scan.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

from epp.datastore.datastore import Datastore
from epp.headers import OBJECTIVE
from epp.scheduling.types import LLMRequest
from epp.server.errors import RequestError
from epp.server.usage import stream_usage_requested, with_stream_usage

CHAT_PATH = "/v1/chat/completions"


class _OpenAIBody(msgspec.Struct):
    model: Any = None
    prompt: Any = None
    messages: Any = None
    stream: Any = False
    max_tokens: Any = None
    max_completion_tokens: Any = None
    cache_salt: Any = None
    add_generation_prompt: Any = None


_decoder = msgspec.json.Decoder(_OpenAIBody)


def parse_request(
    body: bytes,
    path: str,
    request_id: str,
    headers: dict[str, str],
    datastore: Datastore,
) -> LLMRequest:
    """Validate the body and build the LLMRequest; raises RequestError with a 4xx status."""
    if not body.strip():
        raise RequestError(400, "request body is empty; expected a JSON object", "invalid_request_body")
    try:
        parsed = _decoder.decode(body)
    except msgspec.ValidationError:
        raise RequestError(400, "request body must be a JSON object", "invalid_request_body") from None
    except msgspec.DecodeError as e:
        raise RequestError(400, f"malformed JSON in request body: {e}", "invalid_json") from None
    except RecursionError:
        # msgspec bounds nesting by the interpreter's recursion limit (~1000 levels).
        raise RequestError(400, "request body is nested too deeply", "invalid_json") from None

    model = parsed.model
    if model is None or model == "":
        raise RequestError(400, "the 'model' field is required", "missing_model", "model")
    if not isinstance(model, str):
        raise RequestError(400, "the 'model' field must be a string", "invalid_model", "model")

    is_chat = path.startswith(CHAT_PATH)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    if is_chat:
        if not isinstance(parsed.messages, list) or not parsed.messages:
            raise RequestError(400, "'messages' must be a non-empty list for chat completions",
                               "invalid_messages", "messages")
        if not all(isinstance(m, dict) for m in parsed.messages):
            raise RequestError(400, "every item of 'messages' must be an object", "invalid_messages",
                               "messages")
        messages = parsed.messages
    elif parsed.prompt is not None:
        prompt = _prompt_text(parsed.prompt)
    elif parsed.messages is None and path.startswith("/v1/completions"):
        raise RequestError(400, "the 'prompt' field is required for completions", "missing_prompt",
                           "prompt")

    stream = parsed.stream
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "invalid_stream", "stream")
    max_tokens = parsed.max_completion_tokens if parsed.max_completion_tokens is not None \
        else parsed.max_tokens
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise RequestError(400, "'max_tokens' must be an integer", "invalid_max_tokens", "max_tokens")

    # The client names its InferenceObjective in a header (the caller canonicalized the
    # headers: epp/headers.py); older setups keyed it by model.
    objective_name = headers.get(OBJECTIVE)
    objective = datastore.objective(objective_name) if objective_name else None
    if objective is None:
        objective = datastore.objective(model)
    target_model = model
    priority = 0
    if objective is not None:
        priority = objective.priority
        if objective.target_models:
            target_model = _weighted_choice(objective.target_models)
    if datastore.served_models and model not in datastore.served_models and \
            (objective is None or not objective.target_models) and \
            datastore.model_rewrites.rule(model) is None:  # a rewrite names served targets
        raise RequestError(404, f"The model `{model}` does not exist.", "model_not_found", "model")

    return LLMRequest(
        request_id=request_id,
        model=model,
        target_model=target_model,
        path=path,
        prompt=prompt,
        messages=messages,
        stream=stream,
        max_tokens=max_tokens,
        priority=priority,
        headers=headers,
        is_chat=is_chat,
        # The scorers read the few body fields beyond the ones above from here.
        body=_scorer_fields(parsed),
    )


def _scorer_fields(parsed: _OpenAIBody) -> dict[str, Any]:
    """Body fields some scorers read beyond LLMRequest's own: the cache salt, the chat
    template switch, and a prompt given as token ids (which must not be re-tokenized)."""
    out: dict[str, Any] = {}
    if isinstance(parsed.cache_salt, str):
        out["cache_salt"] = parsed.cache_salt
    if isinstance(parsed.add_generation_prompt, bool):
        out["add_generation_prompt"] = parsed.add_generation_prompt
    if isinstance(parsed.prompt, list):
        out["prompt"] = parsed.prompt
    return out


def _prompt_text(prompt: Any) -> str:
    """Completions accept a string, a list of strings, token ids or a list of token-id lists
    (OpenAI's four prompt shapes); flatten to text for hashing. Not recursive: a client
    cannot make it descend deeper than those shapes."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        if all(isinstance(p, str) for p in prompt):
            return "".join(prompt)
        if _is_token_ids(prompt):
            return " ".join(map(str, prompt))
        if all(isinstance(p, list) and _is_token_ids(p) for p in prompt):
            return "".join(" ".join(map(str, p)) for p in prompt)
    raise RequestError(400, "'prompt' must be a string, a list of strings, a list of token ids "
                       "or a list of token-id lists", "invalid_prompt", "prompt")


def _is_token_ids(items: list[Any]) -> bool:
    return all(isinstance(p, int) and not isinstance(p, bool) for p in items)


def _weighted_choice(choices: tuple[tuple[str, int], ...]) -> str:
    total = sum(w for _, w in choices)
    if total <= 0:
        return choices[0][0]
    r = random.random() * total
    for name, weight in choices:
        r -= weight
        if r < 0:
            return name
    return choices[-1][0]


def rewrite_body(body: bytes, *, model: str | None = None, stream_usage: bool = False,
                 priority: int | None = None) -> bytes | None:
    """The request body with the EPP's edits made in one decode and one encode, or None when
    nothing changes (the common case costs nothing):
    - `model` replaces the model name (InferenceModel-style rewrite);
    - `stream_usage` asks a stream for its final usage chunk (stream_options.include_usage,
      the client's other stream options kept);
    - `priority` sets vLLM's request priority (flowControl.forwardPriorityToPods): a
      client-sent value is replaced, as routing headers are.
    """
    if model is None and not stream_usage and priority is None:
        return None
    obj = msgspec.json.decode(body)
    changed = False
    if model is not None:
        obj["model"] = model
        changed = True
    if stream_usage and not stream_usage_requested(obj):
        obj = with_stream_usage(obj)
        changed = True
    if priority is not None:
        obj["priority"] = priority
        changed = True
    return msgspec.json.encode(obj) if changed else None
