"""OpenAI Chat Completions surface (sans-I/O): request validation and the exact bytes of
`chat.completion` and `chat.completion.chunk`, so the official SDKs work unchanged against
`base_url=http://HOST:PORT/v1`.

    POST /v1/chat/completions   {"model", "messages", "stream", "stream_options":
                                 {"include_usage"}, "max_tokens" | "max_completion_tokens",
                                 "n": 1, "seed", ...} plus pushlab's generation parameters
                                 (tokens, rate, ttft_ms, jitter, text) as extra body fields
    GET  /v1/models

Stream: one `data: <chunk>` event per token, then a chunk with an empty delta and the
finish_reason ("stop", or "length" when max_tokens cut the answer), then, with
include_usage, a chunk with `"choices": []` and the usage (every earlier chunk then carries
`"usage": null`), then `data: [DONE]`. No `id:` field is ever sent: a client decoder that
keeps the last event id would otherwise turn a heartbeat comment block into an event with
empty data, which the SDK would try to parse as JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from streams.errors import ParamError
from streams.params import PARAM_NAMES, GenParams, parse_params
from transports.token import dumps

MODELS = ("pushlab-synthetic",)
# OpenAI request fields accepted and ignored (they change nothing in a synthetic answer)
_IGNORED = frozenset({
    "temperature", "top_p", "presence_penalty", "frequency_penalty", "logit_bias", "user",
    "stop", "logprobs", "top_logprobs", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "service_tier", "store", "metadata", "reasoning_effort",
})  # fmt: skip
_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "max_tokens",
                     "max_completion_tokens", "n", "seed"})  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    params: GenParams  # what the generator makes; seed from the request's `seed`
    prompt_tokens: int  # whitespace-separated words of the messages (no real tokenizer)


def _bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ParamError(f"'{name}' must be a boolean", param=name)
    return value


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamError(f"'{name}' must be a positive integer", param=name)
    return value


def _messages(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ParamError("'messages' must be a non-empty array", param="messages")
    words = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            where = f"messages[{i}]"
            raise ParamError(f"'{where}' must be an object with a 'role'", param=where)
        content = message.get("content")
        if isinstance(content, list):  # content parts: count the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        words += len(str(content or "").split())
    return words


def parse_request(body: object) -> ChatRequest:
    """Validate a chat completion request; ParamError names the offending field."""
    if not isinstance(body, dict):
        raise ParamError("request body must be a JSON object", param=None)
    unknown = sorted(set(body) - _FIELDS - _IGNORED - PARAM_NAMES)
    if unknown:
        raise ParamError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ParamError("'model' is required", param="model")
    prompt_tokens = _messages(body)
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not stream:
        message = "'stream_options' is only allowed when 'stream' is true"
        raise ParamError(message, param="stream_options")
    if options is not None and not isinstance(options, dict):
        raise ParamError("'stream_options' must be an object", param="stream_options")
    include_usage = _bool(options or {}, "include_usage", False)
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise ParamError("only n=1 is supported", param="n")
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    generation = {k: v for k, v in body.items() if k in PARAM_NAMES and k != "envelope"}
    if body.get("seed") is not None:
        generation["seed"] = body["seed"]
    params = parse_params(generation, defaults=GenParams(envelope="openai"))
    return ChatRequest(model, stream, include_usage, max_tokens, params, prompt_tokens)


class ChunkEncoder:
    """The bytes of one streamed answer's chunks (each a complete SSE `data:` event)."""

    def __init__(self, request: ChatRequest, completion_id: str, created_s: int) -> None:
        self.request = request
        self.head = {"id": completion_id, "object": "chat.completion.chunk", "created": created_s,
                     "model": request.model, "system_fingerprint": None}  # fmt: skip
        self.sent = 0

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {**self.head, "choices": choices, **extra}
        if self.request.include_usage and "usage" not in extra:
            chunk["usage"] = None
        return b"data: " + dumps(chunk) + b"\n\n"

    def token(self, text: str, stream: str, seq: int, t_emit_ns: int) -> bytes:
        """One token's chunk; `pushlab` carries stream, seq and emit time (SDKs ignore it)."""
        delta = {"role": "assistant", "content": text} if self.sent == 0 else {"content": text}
        self.sent += 1
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        return self._event([choice], pushlab={"stream": stream, "seq": seq, "t_emit_ns": t_emit_ns})

    def error(self, message: str) -> bytes:
        """A stream that cannot finish: OpenAI streams an `error` object, then nothing."""
        body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        return b"data: " + dumps(body) + b"\n\n"

    def finish(self, reason: str) -> bytes:
        """The closing chunk, the usage chunk when asked for, and [DONE]."""
        out = self._event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])
        if self.request.include_usage:
            out += self._event([], usage=usage(self.request, self.sent))
        return out + b"data: [DONE]\n\n"


def usage(request: ChatRequest, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": request.prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": request.prompt_tokens + completion_tokens}  # fmt: skip


def completion(request: ChatRequest, completion_id: str, created_s: int, text: str, tokens: int,
               reason: str) -> bytes:  # fmt: skip
    """The non-streamed `chat.completion` object."""
    return dumps({
        "id": completion_id, "object": "chat.completion", "created": created_s,
        "model": request.model, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": reason}],
        "usage": usage(request, tokens),
    })  # fmt: skip


def models() -> bytes:
    return dumps({"object": "list", "data": [
        {"id": m, "object": "model", "created": 0, "owned_by": "pushlab"} for m in MODELS
    ]})  # fmt: skip


def error_body(exc: ParamError | Any, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: pushlab's plus `code`."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": code}}
