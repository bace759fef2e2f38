"""WebTransport wire format (sans-I/O): a session over HTTP/3, the lab's messages on its streams.

The session (draft-ietf-webtrans-http3-02, what aioquic and Chromium both speak):

    client -> server  HEADERS  :method CONNECT  :protocol webtransport  :scheme https
                               :authority 127.0.0.1:PORT  :path /wt[?ticket=...]
                               sec-webtransport-http3-draft02: 1  [authorization: Bearer ...]
    server -> client  HEADERS  :status 200  sec-webtransport-http3-draft: draft02
                      (a refusal: :status 4xx and a JSON error body, docs/PROTOCOL.md "Errors")

Inside it the lab speaks the WebSocket transport's JSON messages (transports/websocket.py),
one per line (LF-terminated compact JSON, as NDJSON: JSON text never holds a raw LF):

    control stream  the first bidirectional stream the client opens in the session
        client -> server  {"type":"start", ...params, "delivery":"stream"|"datagram"}
                          {"type":"resume","stream":ID,"after":SEQ,"delivery":...}
                          {"type":"cancel"}
        server -> client  {"type":"error","error":{...}} before the session closes
    token stream    a unidirectional stream the server opens per start or resume
        {"type":"started","stream":ID,"after":SEQ,"delivery":"stream"|"datagram"}
        {"type":"token",...token object}        (delivery "stream" only)
        {"type":"done","stream":ID,"seq":LAST,"reason":...}   then FIN
    datagrams       (delivery "datagram") one token object per datagram, as the WebSocket
        message {"type":"token",...}; unreliable and unordered: the client counts what never
        came from `done`'s LAST. A token too large for one datagram goes on the token stream.

The session ends with a CLOSE_WEBTRANSPORT_SESSION capsule (RFC 9297 capsule on the CONNECT
stream: type 0x2843, a 32-bit code, a UTF-8 message of at most 1024 bytes) and FIN. Codes
are the WebSocket close codes the lab already uses, so one table serves both: 0 done,
1008 bad input, 1011 a server fault. A malformed capsule from the client closes the session
with 1008 and says what was wrong.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from aioquic.buffer import Buffer, BufferReadError, encode_uint_var

from streams.errors import ParamError, ProtocolError
from streams.params import GenParams
from transports import websocket
from transports.jsonin import load_json
from transports.token import TokenRecord, dumps
from transports.websocket import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    Cancel,
    Done,
    Error,
    Started,
    encode_error,
    parse_server_message,
)

__all__ = [
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "DRAFT",
    "PATH",
    "Cancel",
    "CapsuleParser",
    "Done",
    "Error",
    "LineBuffer",
    "Started",
]

PATH = "/wt"
DRAFT = "draft02"  # the one draft spoken: aioquic's SETTINGS_ENABLE_WEBTRANSPORT, Chromium's
DRAFT_REQUEST_HEADER = "sec-webtransport-http3-draft02"  # sent by the client, value "1"
DRAFT_RESPONSE_HEADER = "sec-webtransport-http3-draft"  # sent by the server, value "draft02"
_DRAFT_PREFIX = "sec-webtransport-http3-draft"

CLOSE_OK = 0
# draft-ietf-webtrans-http3 section 5 (and RFC 9297 section 3.2 for the framing)
CLOSE_WEBTRANSPORT_SESSION = 0x2843
DRAIN_WEBTRANSPORT_SESSION = 0x78AE
MAX_CLOSE_MESSAGE_BYTES = 1024  # the draft's limit on the close capsule's message
MAX_CAPSULE_BYTES = 64 * 1024  # ours: a capsule we would have to buffer beyond this is refused
MAX_LINE_BYTES = 64 * 1024  # as the WebSocket transport's MAX_MESSAGE_BYTES

Delivery = Literal["stream", "datagram"]
DELIVERIES: tuple[Delivery, ...] = ("stream", "datagram")


# --- the session's request ---------------------------------------------------------------


def offered_drafts(headers: dict[str, str]) -> list[str]:
    """The drafts a CONNECT request names: `sec-webtransport-http3-draftNN` header names and
    the values of `sec-webtransport-http3-draft`; [] when it names none."""
    drafts = []
    for name, value in headers.items():
        if name.startswith(_DRAFT_PREFIX) and name != _DRAFT_PREFIX:
            drafts.append("draft" + name[len(_DRAFT_PREFIX) :])
        elif name == _DRAFT_PREFIX:
            drafts += [v.strip() for v in value.split(",") if v.strip()]
    return drafts


def check_draft(headers: dict[str, str]) -> str:
    """The draft this session speaks: DRAFT when the request names it or names none (aioquic's
    own client names none); ParamError naming what was offered otherwise."""
    drafts = offered_drafts(headers)
    if not drafts or DRAFT in drafts:
        return DRAFT
    shown = ", ".join(d[:32] for d in drafts[:4])
    raise ParamError(
        f"unsupported WebTransport draft {shown}; this server speaks {DRAFT}",
        param=DRAFT_REQUEST_HEADER,
    )


# --- capsules on the CONNECT stream -----------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Capsule:
    type: int
    value: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class SessionClosed:
    """A CLOSE_WEBTRANSPORT_SESSION capsule, read."""

    code: int
    message: str


def encode_capsule(capsule_type: int, value: bytes) -> bytes:
    return encode_uint_var(capsule_type) + encode_uint_var(len(value)) + value


def encode_close(code: int, message: str) -> bytes:
    """A CLOSE_WEBTRANSPORT_SESSION capsule; the message cut on a character boundary to fit."""
    if not 0 <= code < 2**32:
        raise ValueError(f"a session close code is 32 bits, got {code}")
    data = message.encode("utf-8", "backslashreplace")[:MAX_CLOSE_MESSAGE_BYTES]
    data = data.decode("utf-8", "ignore").encode()
    return encode_capsule(CLOSE_WEBTRANSPORT_SESSION, code.to_bytes(4, "big") + data)


def decode_close(value: bytes) -> SessionClosed:
    """A close capsule's value; ProtocolError when it is malformed."""
    if len(value) < 4:
        raise ProtocolError(f"close capsule of {len(value)} bytes: shorter than its 4-byte code")
    if len(value) - 4 > MAX_CLOSE_MESSAGE_BYTES:
        raise ProtocolError(f"close capsule message of {len(value) - 4} bytes, over 1024")
    try:
        message = value[4:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("close capsule message is not UTF-8") from None
    return SessionClosed(int.from_bytes(value[:4], "big"), message)


class CapsuleParser:
    """Bytes of the CONNECT stream in, capsules out (RFC 9297 section 3.2).

    Unknown types are dropped, as the RFC requires; a close capsule is returned as
    `SessionClosed`. `feed` raises ProtocolError for a capsule that announces more than
    MAX_CAPSULE_BYTES (it would have to be buffered) or a malformed close; `end` (the
    stream's FIN) raises it when a capsule was cut short."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[SessionClosed | Capsule]:
        buf = self._rest + data if self._rest else data
        out: list[SessionClosed | Capsule] = []
        pos = 0
        while pos < len(buf):
            reader = Buffer(data=buf[pos:])
            try:
                capsule_type = reader.pull_uint_var()
                length = reader.pull_uint_var()
            except BufferReadError:
                break  # the header itself is not complete yet
            if length > MAX_CAPSULE_BYTES:
                raise ProtocolError(
                    f"capsule of {length} bytes announced, over {MAX_CAPSULE_BYTES}"
                )
            start = pos + reader.tell()
            if len(buf) - start < length:
                break
            value = buf[start : start + length]
            pos = start + length
            if capsule_type == CLOSE_WEBTRANSPORT_SESSION:
                out.append(decode_close(value))
            elif capsule_type == DRAIN_WEBTRANSPORT_SESSION:
                out.append(Capsule(capsule_type, value))
            # any other type: dropped (RFC 9297 section 3.2)
        self._rest = buf[pos:]
        return out

    def end(self) -> None:
        if self._rest:
            raise ProtocolError(
                f"capsule cut short at the end of the stream ({len(self._rest)} bytes)"
            )


# --- lines on the control and token streams -----------------------------------------------


class LineBuffer:
    """Bytes of one stream in, complete LF-terminated lines out; a line that grows past
    MAX_LINE_BYTES without its LF raises ProtocolError (memory stays bounded)."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._rest = b""
        self._max = max_bytes

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._rest + data if self._rest else data
        lines = buf.split(b"\n")
        self._rest = lines.pop()
        if len(self._rest) > self._max:
            raise ProtocolError(f"a message of over {self._max} bytes without its end")
        if any(len(line) > self._max for line in lines):
            raise ProtocolError(f"a message of over {self._max} bytes")
        return [line for line in lines if line]

    @property
    def pending(self) -> bytes:
        return self._rest


@dataclasses.dataclass(frozen=True, slots=True)
class Start:
    params: GenParams
    delivery: Delivery = "stream"


@dataclasses.dataclass(frozen=True, slots=True)
class Resume:
    stream: str
    after: int
    delivery: Delivery = "stream"


ClientMessage = Start | Resume | Cancel


def _delivery(obj: dict[str, object]) -> Delivery:
    value = obj.pop("delivery", "stream")
    if value not in DELIVERIES:
        raise ParamError("'delivery' must be stream or datagram", param="delivery")
    return value


def parse_client_message(line: bytes) -> ClientMessage:
    """Server side: one control-stream line, the WebSocket transport's messages plus
    `delivery` on start and resume; raises ParamError with what was wrong."""
    obj = load_json(line, what="message")
    delivery = _delivery(obj) if isinstance(obj, dict) and obj.get("type") != "cancel" else None
    message = websocket.client_message(obj)
    if isinstance(message, websocket.Start):
        return Start(message.params, delivery or "stream")
    if isinstance(message, websocket.Resume):
        return Resume(message.stream, message.after, delivery or "stream")
    return message


def encode_start(params: GenParams, delivery: Delivery = "stream") -> bytes:
    return dumps({"type": "start", **params.as_dict(), "delivery": delivery}) + b"\n"


def encode_resume(stream: str, after: int, delivery: Delivery = "stream") -> bytes:
    return dumps({"type": "resume", "stream": stream, "after": after, "delivery": delivery}) + b"\n"


def encode_cancel() -> bytes:
    return b'{"type":"cancel"}\n'


def encode_started(stream: str, after: int, delivery: Delivery = "stream") -> bytes:
    return (
        dumps({"type": "started", "stream": stream, "after": after, "delivery": delivery}) + b"\n"
    )


def encode_token_line(payload: bytes) -> bytes:
    """A token on the token stream: the WebSocket message spliced onto the shared bytes."""
    return b'{"type":"token",' + payload[1:] + b"\n"


def encode_token_datagram(payload: bytes) -> bytes:
    """A token as one datagram's payload (after the quarter stream id aioquic adds)."""
    return b'{"type":"token",' + payload[1:]


def encode_done(stream: str, seq: int, reason: str) -> bytes:
    return dumps({"type": "done", "stream": stream, "seq": seq, "reason": reason}) + b"\n"


def encode_error_line(error_json: dict[str, object]) -> bytes:
    return encode_error(error_json) + b"\n"


def parse_server_line(line: bytes) -> Started | TokenRecord | Done | Error:
    """Client side: one line of a token or control stream, or one datagram; `started` keeps
    only its stream and after (the delivery is the client's own choice, echoed)."""
    return parse_server_message(line)
