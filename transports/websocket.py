"""WebSocket message schema (sans-I/O): what client and server say to each other on `/ws`.

Client -> server (text frames, JSON):
    {"type": "start", ...generation params}        start a new stream on this connection
    {"type": "resume", "stream": ID, "after": SEQ}  continue a stream after SEQ (reconnect)
    {"type": "cancel"}                              stop the stream this connection follows
Server -> client (text frames, JSON):
    {"type": "started", "stream": ID, "after": SEQ}
    {"type": "token", ...token object}              see transports/token.py
    {"type": "done", "stream": ID, "seq": LAST, "reason": "done" | "cancelled" | "idle"}
    {"type": "error", "error": {"message", "type", "param"}}   then a close frame: 1008 bad
        input, 1003 a binary frame, 1011 a server fault (RFC 6455 7.4.1); a message over
        64 KiB is closed with 1009 by the frame reader, before any error message can be sent

One stream at a time per connection; a second start while one runs is an error.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from streams.errors import ParamError, ProtocolError
from streams.params import GenParams, parse_params
from transports.jsonin import load_json
from transports.token import TokenRecord, decode_token, dumps, loads

CLOSE_POLICY_VIOLATION = 1008  # RFC 6455 section 7.4.1: "a message that violates its policy"
CLOSE_UNSUPPORTED_DATA = 1003  # RFC 6455 section 7.4.1: a type of data it cannot accept
# "Internal Error": not in RFC 6455 section 7.4.1, added to its IANA close code registry
# (section 11.7) later, and what browsers and aiohttp use for a server fault
CLOSE_INTERNAL_ERROR = 1011
MAX_REASON_BYTES = 123  # RFC 6455 section 5.5: a control frame's payload is at most 125 bytes


def close_reason(message: str) -> bytes:
    """A close frame's reason: `message` as UTF-8 (what cannot be encoded, escaped), cut on
    a character boundary to fit the frame (RFC 6455 section 5.5.1: the reason is UTF-8)."""
    data = message.encode("utf-8", "backslashreplace")[:MAX_REASON_BYTES]
    return data.decode("utf-8", "ignore").encode()


@dataclasses.dataclass(frozen=True, slots=True)
class Start:
    params: GenParams


@dataclasses.dataclass(frozen=True, slots=True)
class Resume:
    stream: str
    after: int


@dataclasses.dataclass(frozen=True, slots=True)
class Cancel:
    pass


ClientMessage = Start | Resume | Cancel


def parse_client_message(text: str) -> ClientMessage:
    """Server side: read one client message; raises ParamError with what was wrong."""
    return client_message(load_json(text, what="message"))


def client_message(obj: object) -> ClientMessage:
    """A parsed JSON value as a client message (WebTransport's control lines are the same
    messages); raises ParamError with what was wrong."""
    if not isinstance(obj, dict):
        raise ParamError("message must be a JSON object", param=None)
    kind = obj.pop("type", None)
    if kind == "start":
        return Start(parse_params(obj))
    if kind == "resume":
        stream, after = obj.get("stream"), obj.get("after", 0)
        if not isinstance(stream, str) or not stream:
            raise ParamError("'stream' must be a stream id", param="stream")
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**63:
            raise ParamError("'after' must be a non-negative integer", param="after")
        extra = sorted(set(obj) - {"stream", "after"})
        if extra:
            raise ParamError(f"unknown parameter '{extra[0][:64]}'", param=extra[0][:64])
        return Resume(stream, after)
    if kind == "cancel":
        return Cancel()
    shown = repr(kind) if len(repr(kind)) <= 64 else repr(kind)[:60] + "..."
    raise ParamError(f"'type' must be start, resume or cancel, got {shown}", param="type")


def encode_start(params: GenParams) -> str:
    return dumps({"type": "start", **params.as_dict()}).decode()


def encode_resume(stream: str, after: int) -> str:
    return dumps({"type": "resume", "stream": stream, "after": after}).decode()


def encode_cancel() -> str:
    return '{"type":"cancel"}'


def encode_started(stream: str, after: int) -> bytes:
    return dumps({"type": "started", "stream": stream, "after": after})


def encode_token_message(payload: bytes) -> bytes:
    """`{"type":"token", ...}` spliced onto the shared token bytes, without re-encoding."""
    return b'{"type":"token",' + payload[1:]


def encode_done(stream: str, seq: int, reason: str) -> bytes:
    return dumps({"type": "done", "stream": stream, "seq": seq, "reason": reason})


def encode_error(error_json: dict[str, Any]) -> bytes:
    """The `error` message; a message text UTF-8 cannot encode is sent JSON-escaped."""
    text = json.dumps({"type": "error", **error_json}, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace")


@dataclasses.dataclass(frozen=True, slots=True)
class Started:
    stream: str
    after: int


@dataclasses.dataclass(frozen=True, slots=True)
class Done:
    stream: str
    seq: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Error:
    message: str
    type: str
    param: str | None


ServerMessage = Started | TokenRecord | Done | Error


def parse_server_message(data: bytes | str) -> ServerMessage:
    """Client side: read one server message; raises ProtocolError on anything else."""
    obj = loads(data)
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "token":
        return decode_token(obj)
    try:
        if kind == "started":
            return Started(obj["stream"], int(obj["after"]))
        if kind == "done":
            return Done(obj["stream"], int(obj["seq"]), obj["reason"])
        if kind == "error":
            err = obj["error"]
            return Error(err["message"], err["type"], err.get("param"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed {kind} message") from exc
    raise ProtocolError(f"unknown server message type {kind!r}")
