"""OpenAI Chat Completions surface (sans-I/O): request validation and the exact bytes of
`chat.completion` and `chat.completion.chunk`, so the official SDKs work unchanged against
`base_url=http://HOST:PORT/v1`. It is the one chunk codec: `encode_chunk` makes every chunk
(/v1's, and transports/token.py's openai envelope), `decode_chunk`/`ChunkDecoder` read every
chunk (the envelope, the /v1 client, the relay reading an upstream model).

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
from collections.abc import Iterator, Mapping
from typing import Any

from streams.errors import ParamError, ProtocolError
from streams.params import PARAM_NAMES, GenParams, parse_params
from transports.errors import openai_error_body
from transports.sse import DONE, SSEParser
from transports.token import TokenRecord, dumps, loads

MODELS = ("pushlab-synthetic",)
# The request's `model` is echoed in every chunk: uncapped, a 60 KB name made a 294 MB
# answer (attack probe, issue 14). OpenAI's own model ids are under 64 characters.
MAX_MODEL_CHARS = 128
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


def _text(message: Mapping[str, Any], where: str) -> str:
    """A message's text: `content` is a string, null (an assistant turn that only called
    tools), or a list of `{"type": "text", "text": str}` parts."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ParamError(f"'{where}.content' must be a string or an array of parts",
                         param=f"{where}.content")  # fmt: skip
    texts = []
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text"
                and isinstance(part.get("text"), str)):  # fmt: skip
            at = f"{where}.content[{j}]"
            raise ParamError(f"'{at}' must be a text part {{\"type\": \"text\", \"text\": str}}",
                             param=at)  # fmt: skip
        texts.append(part["text"])
    return " ".join(texts)


def _messages(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ParamError("'messages' must be a non-empty array", param="messages")
    words = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ParamError(f"'{where}' must be an object with a string 'role'", param=where)
        words += len(_text(message, where).split())
    return words


def parse_request(body: object) -> ChatRequest:
    """Validate a chat completion request; ParamError names the offending field."""
    if not isinstance(body, dict):
        raise ParamError("request body must be a JSON object", param=None)
    unknown = sorted(set(body) - _FIELDS - _IGNORED - PARAM_NAMES)
    if unknown:
        name = unknown[0][:64]
        raise ParamError(f"Unrecognized request argument supplied: {name}", param=name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ParamError("'model' is required", param="model")
    if len(model) > MAX_MODEL_CHARS:
        raise ParamError(f"'model' is longer than {MAX_MODEL_CHARS} characters", param="model")
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


CHUNK_OBJECT = "chat.completion.chunk"


def completion_id(stream_id: str) -> str:
    """The `id` of every chunk (and of the whole completion) of the answer `stream_id`."""
    return f"chatcmpl-{stream_id}"


def token_choice(text: str, first: bool) -> dict[str, Any]:
    """One token's choice; the first delta of an answer also names the role."""
    delta = {"role": "assistant", "content": text} if first else {"content": text}
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}


def finish_choice(reason: str) -> dict[str, Any]:
    return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}


def encode_chunk(chunk_id: str, created_s: int, model: str, choices: list[dict[str, Any]], *,
                 fingerprint: bool = True, pushlab: dict[str, Any] | None = None,
                 usage_field: bool = False,
                 usage: dict[str, int] | None = None) -> bytes:  # fmt: skip
    """The one `chat.completion.chunk` encoder: compact JSON, keys in this order: id, object,
    created, model, [system_fingerprint], choices, [pushlab], [usage when `usage_field`]."""
    chunk: dict[str, Any] = {"id": chunk_id, "object": CHUNK_OBJECT, "created": created_s,
                             "model": model}  # fmt: skip
    if fingerprint:
        chunk["system_fingerprint"] = None
    chunk["choices"] = choices
    if pushlab is not None:
        chunk["pushlab"] = pushlab
    if usage_field:
        chunk["usage"] = usage
    return dumps(chunk)


def envelope_chunk(stream_id: str, seq: int, t_emit_ns: int, text: str) -> bytes:
    """Envelope "openai" of transports/token.py: a chunk without `system_fingerprint` or
    `usage`, `created` from the emit time (its bytes predate /v1's and are kept as they were)."""
    meta = {"stream": stream_id, "seq": seq, "t_emit_ns": t_emit_ns}
    choices = [token_choice(text, seq == 1)]
    created_s = t_emit_ns // 1_000_000_000
    return encode_chunk(
        completion_id(stream_id), created_s, MODELS[0], choices, fingerprint=False, pushlab=meta
    )


def event(chunk: bytes) -> bytes:
    """A chunk as the SSE event /v1 sends: a `data:` line, no `id:` (see the docstring)."""
    return b"data: " + chunk + b"\n\n"


class ChunkEncoder:
    """One streamed /v1 answer's chunks. Called as the hub's encoder for the answer's stream
    (so each token's chunk is encoded once, by the hub, and /v1 only frames it)."""

    def __init__(self, request: ChatRequest, created_s: int) -> None:
        self.request = request
        self.created_s = created_s

    def __call__(self, stream_id: str, seq: int, t_emit_ns: int, text: str,
                 params: GenParams) -> bytes:  # fmt: skip
        """One token's chunk (`pushlab` carries stream, seq and emit time; SDKs ignore it)."""
        return encode_chunk(completion_id(stream_id), self.created_s, self.request.model,
                            [token_choice(text, seq == 1)],
                            pushlab={"stream": stream_id, "seq": seq, "t_emit_ns": t_emit_ns},
                            usage_field=self.request.include_usage)  # fmt: skip

    def error(self, message: str) -> bytes:
        """A stream that cannot finish: OpenAI streams an `error` object, then nothing."""
        return event(dumps(openai_error_body(message, "server_error")))

    def finish(self, stream_id: str, reason: str, completion_tokens: int) -> bytes:
        """The closing chunk, the usage chunk when asked for, and [DONE]."""
        head = (completion_id(stream_id), self.created_s, self.request.model)
        include = self.request.include_usage
        out = event(encode_chunk(*head, [finish_choice(reason)], usage_field=include))
        if include:
            used = usage(self.request, completion_tokens)
            out += event(encode_chunk(*head, [], usage_field=True, usage=used))
        return out + DONE


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    """One decoded chunk: the deltas' contents, the finish reason, the token, or an error."""

    contents: tuple[str, ...] = ()  # each choice's delta.content that is not null, in order
    finish_reason: str | None = None  # the last choice's non-null finish_reason
    token: TokenRecord | None = None  # the `pushlab` field + the first choice's content
    error: str | None = None  # a streamed `error` object's message
    usage: dict[str, Any] | None = None


def decode_chunk(obj: object) -> Chunk:
    """Read a chunk (ours or any OpenAI-compatible server's); ProtocolError if it is none."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"not a chat completion chunk: {str(obj)[:120]}")
    try:
        err = obj.get("error")
        if err is not None:
            return Chunk(error=str(err.get("message") if isinstance(err, dict) else err))
        choices = obj.get("choices") or []  # [] in the usage chunk
        contents, reason = [], None
        for choice in choices:
            content = (choice.get("delta") or {}).get("content")
            if content is not None:
                contents.append(str(content))
            reason = choice.get("finish_reason") or reason
        token = None
        if "pushlab" in obj and choices:
            meta, text = obj["pushlab"], choices[0]["delta"].get("content") or ""
            token = TokenRecord(meta["stream"], int(meta["seq"]), int(meta["t_emit_ns"]), text)
        return Chunk(tuple(contents), reason, token, None, obj.get("usage"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"malformed chat completion chunk: {str(obj)[:120]}") from exc


class ChunkDecoder:
    """A streamed answer's bytes in, its chunks out, however the bytes are split; `done` once
    `data: [DONE]` arrived (what follows it is ignored)."""

    def __init__(self) -> None:
        self._sse = SSEParser()
        self.done = False

    def feed(self, data: bytes) -> Iterator[Chunk]:
        """The chunks completed by `data`, decoded one at a time as they are taken, so the
        chunks before a malformed one are read before its ProtocolError is raised."""
        for ev in self._sse.feed(data):
            if self.done:
                return
            if ev.data == "[DONE]":
                self.done = True
            else:
                yield decode_chunk(loads(ev.data))


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
