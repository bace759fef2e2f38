"""WebSocket message schema (sans-I/O): what client and server say to each other on `/ws`.

Client -> server (text frames, JSON):
    {"type": "start", ...generation params}        start a new stream on this connection
    {"type": "resume", "stream": ID, "after": SEQ}  continue a stream after SEQ (reconnect)
    {"type": "cancel"}                              stop the stream this connection follows
Server -> client (text frames, JSON):
    {"type": "started", "stream": ID, "after": SEQ}
    {"type": "token", ...token object}              see transports/token.py
    {"type": "done", "stream": ID, "seq": LAST, "reason": "done" | "cancelled" | "idle"}
    {"type": "error", "error": {"message", "type", "param"}}   then close 1008 (RFC 6455 7.4.1)

One stream at a time per connection; a second start while one runs is an error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from streams.errors import ParamError, ProtocolError
from streams.params import GenParams, parse_params
from transports.token import TokenRecord, decode_token, dumps, loads

CLOSE_POLICY_VIOLATION = 1008  # RFC 6455 section 7.4.1: "a message that violates its policy"
CLOSE_UNSUPPORTED_DATA = 1003  # RFC 6455 section 7.4.1: a type of data it cannot accept


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
    try:
        obj = loads(text)
    except ProtocolError:
        raise ParamError("message is not valid JSON", param=None) from None
    if not isinstance(obj, dict):
        raise ParamError("message must be a JSON object", param=None)
    kind = obj.pop("type", None)
    if kind == "start":
        return Start(parse_params(obj))
    if kind == "resume":
        stream, after = obj.get("stream"), obj.get("after", 0)
        if not isinstance(stream, str) or not stream:
            raise ParamError("'stream' must be a stream id", param="stream")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ParamError("'after' must be a non-negative integer", param="after")
        extra = sorted(set(obj) - {"stream", "after"})
        if extra:
            raise ParamError(f"unknown parameter '{extra[0]}'", param=extra[0])
        return Resume(stream, after)
    if kind == "cancel":
        return Cancel()
    raise ParamError(f"'type' must be start, resume or cancel, got {kind!r}", param="type")


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
    return dumps({"type": "error", **error_json})


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
