"""Server-sent events codec, sans-I/O: bytes for the server to write, events for the client.

Encoding is a handful of pure functions (`encode_event`, `encode_token`, `encode_comment`,
`encode_retry`, `DONE`). Decoding is `SSEParser`, which follows the WHATWG HTML standard,
section 9.2.5 "Parsing an event stream" and 9.2.6 "Interpreting an event stream", in two stages:

1. bytes -> lines (`_LineDecoder`): an incremental UTF-8 decoder with replacement (so a
   character split across chunks decodes right), one leading U+FEFF stripped at the very start
   of the stream, and lines cut at CRLF, lone LF or lone CR, and nowhere else. A CR ending one
   chunk is a line end at once; an LF opening the next chunk is then swallowed as its pair. The
   unterminated tail is kept as a list of pieces, so each byte is scanned and copied once and
   parsing stays linear however the stream is chunked.
2. lines -> events (`SSEParser`): comments, fields and the dispatch step on a blank line, with
   the data, event type and last event ID buffers of the spec.

Neither stage does I/O; the asyncio glue feeds `SSEParser.feed()` and acts on what it returns.
The parser never raises on any input: every byte sequence is a valid event stream.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = [
    "DONE",
    "Event",
    "SSEParser",
    "encode_comment",
    "encode_event",
    "encode_retry",
    "encode_token",
]

DONE = b"data: [DONE]\n\n"
"""End-of-stream marker, as the OpenAI API sends it (a `message` event with data `[DONE]`)."""

_BOM = "\ufeff"


# --------------------------------------------------------------------------- encoding


def _check_single_line(what: str, value: str, *, nul: bool = False) -> None:
    if "\r" in value or "\n" in value or (nul and "\x00" in value):
        banned = "CR, LF or NUL" if nul else "CR or LF"
        raise ValueError(f"SSE {what} must not contain {banned}: {value!r}")


def _check_retry(retry_ms: int) -> None:
    if retry_ms < 0:
        raise ValueError(f"SSE retry must be >= 0 ms, got {retry_ms}")


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,  # shadows the builtin: it is the spec's field name
    retry_ms: int | None = None,
) -> bytes:
    """UTF-8 bytes of one event block: `retry:`, `event:`, `id:`, one `data:` line per line.

    `data` is split on CRLF, CR and LF, so it comes back from `SSEParser` with every line break
    as LF. `data=""` encodes one `data: ` line, and the spec *does* dispatch that (as an event
    with empty data: the data buffer is "\\n", not empty); what the spec never dispatches is a
    block with no `data:` line at all (see `encode_retry`, `encode_comment`). An `event` of ""
    reads back as type "message", and `id=""` resets the client's last event ID.
    Raises ValueError for CR/LF in `event` or `id`, NUL in `id`, or a negative `retry_ms`.
    """
    parts: list[str] = []
    if retry_ms is not None:
        _check_retry(retry_ms)
        parts.append(f"retry: {retry_ms}\n")
    if event is not None:
        _check_single_line("event", event)
        parts.append(f"event: {event}\n")
    if id is not None:
        _check_single_line("id", id, nul=True)
        parts.append(f"id: {id}\n")
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """A comment block `: text` + blank line, used as a heartbeat; dispatches nothing.

    Raises ValueError if `text` contains CR or LF.
    """
    _check_single_line("comment", text)
    return f": {text}\n\n".encode()


def encode_retry(retry_ms: int) -> bytes:
    """A block holding only `retry: N`: sets the client's reconnection time, dispatches nothing."""
    _check_retry(retry_ms)
    return b"retry: %d\n\n" % retry_ms


def encode_open(stream_id: str, after: int, retry_ms: int) -> bytes:
    """The block that opens every pushlab event stream: `retry:` and `id: <stream>:<after>`.

    It has no `data:` line, so it dispatches nothing, but the spec's dispatch step still
    commits the id ("set the last event ID string of the event source to the value of the
    last event ID buffer"): a connection cut before the first token can already resume.
    """
    _check_retry(retry_ms)
    event_id = f"{stream_id}:{after}"
    _check_single_line("id", event_id, nul=True)
    return b"retry: %d\nid: %s\n\n" % (retry_ms, event_id.encode())


def encode_token(stream_id: str, seq: int, payload: bytes) -> bytes:
    """The server's fast path for one token: `id: <stream_id>:<seq>`, `data: <payload>`.

    Equals `encode_event(payload.decode(), id=f"{stream_id}:{seq}")`. Precondition, not checked
    for speed: `payload` is compact JSON (UTF-8, no CR or LF) and `stream_id` has no CR/LF/NUL.
    """
    return b"id: " + f"{stream_id}:{seq}".encode() + b"\ndata: " + payload + b"\n\n"


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: its type, its data, and the last event ID string at dispatch."""

    type: str = "message"
    data: str = ""
    last_event_id: str = ""


class _LineDecoder:
    """Stage 1: bytes in, complete lines (without their line end) out."""

    def __init__(self) -> None:
        # 9.2.5: "Streams must be decoded using the UTF-8 decode algorithm" (replacement
        # on errors, and a leading BOM is skipped, which `_at_start` does by hand).
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._at_start = True
        self._pending_cr = False  # the last character seen was a CR (already a line end)
        self._tail: list[str] = []  # pieces of the line not yet terminated

    def feed(self, chunk: bytes, *, final: bool = False) -> list[str]:
        text = self._decoder.decode(chunk, final)
        if not text:
            return []
        if self._at_start:
            self._at_start = False
            if text[0] == _BOM:  # 9.2.5: `stream = [ bom ] *event`, one BOM, at the start only
                text = text[1:]
        if self._pending_cr:
            # 9.2.5: `end-of-line = ( cr lf / cr / lf )`: a CR closing the previous chunk
            # was a line end; an LF right after it belongs to the same CRLF.
            self._pending_cr = False
            if text[0] == "\n":
                text = text[1:]
        if "\r" in text:
            self._pending_cr = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        # Only CR and LF end lines: str.split("\n"), never str.splitlines (which would also
        # split on U+2028, U+0085, VT, FF, ...).
        lines = text.split("\n")
        last = lines.pop()
        if lines and self._tail:
            self._tail.append(lines[0])
            lines[0] = "".join(self._tail)
            self._tail = []
        if last:
            self._tail.append(last)
        return lines

    def feed_eof(self) -> None:
        """Flush the decoder and drop the unterminated line (9.2.6: pending data is discarded)."""
        self.feed(b"", final=True)
        self._tail = []


class SSEParser:
    """Stage 2: turns the bytes of one event stream into `Event`s (WHATWG HTML 9.2.6).

    `feed()` returns the events completed by a chunk; `feed_eof()` ends the stream, discarding
    an event not yet terminated by a blank line. `last_event_id` is what a reconnect must send
    as `Last-Event-ID`: the ID committed by the most recent blank line, never an `id:` of an
    event still open. `retry_ms` is the latest valid `retry:` value (None until one arrives).
    Never raises on any input; `feed()` after `feed_eof()` is a RuntimeError (a caller bug).
    """

    def __init__(self) -> None:
        self._lines = _LineDecoder()
        # 9.2.6: "a data buffer, an event type buffer, and a last event ID buffer [...] must be
        # initialized to the empty string." The data buffer is kept as the list of `data`
        # values: "value + LF" appended n times, minus the last LF, is "\n".join(values).
        self._data: list[str] = []
        self._event_type = ""
        self._id_buffer = ""
        self._last_event_id = ""
        self._retry_ms: int | None = None
        self._bytes_fed = 0
        self._eof = False

    @property
    def last_event_id(self) -> str:
        """The last event ID string as of the latest dispatch step (blank line)."""
        return self._last_event_id

    @property
    def retry_ms(self) -> int | None:
        """The reconnection time the server asked for, in ms, or None if it never did."""
        return self._retry_ms

    @property
    def bytes_fed(self) -> int:
        """Total bytes passed to `feed()`."""
        return self._bytes_fed

    def feed(self, chunk: bytes) -> list[Event]:
        """Consume one chunk of the stream; return the events it completed, in order."""
        if self._eof:
            raise RuntimeError("SSEParser.feed() called after feed_eof()")
        self._bytes_fed += len(chunk)
        events: list[Event] = []
        for line in self._lines.feed(chunk):
            self._process_line(line, events)
        return events

    def feed_eof(self) -> list[Event]:
        """End the stream. An event not terminated by a blank line is discarded, its id unused.

        9.2.6: "If the file ends in the middle of an event, before the final empty line, the
        incomplete event is not dispatched." So this always returns []; idempotent.
        """
        if not self._eof:
            self._eof = True
            self._lines.feed_eof()
            self._data = []
            self._event_type = ""
            self._id_buffer = self._last_event_id
        return []

    def _process_line(self, line: str, events: list[Event]) -> None:
        # 9.2.6 "Lines must be processed, in the order they are received, as follows:"
        if not line:
            # "If the line is empty (a blank line): Dispatch the event."
            self._dispatch(events)
            return
        # "If the line starts with a U+003A COLON character (:)": a comment, "Ignore the line."
        # "If the line contains a U+003A COLON character (:)": field is what precedes the first
        # colon, value what follows. "Otherwise, the string is not empty but does not contain a
        # U+003A COLON": the whole line is the field name, the empty string the value.
        # str.partition does all three: a comment is the line whose field comes out empty.
        field, _, value = line.partition(":")
        if not field:
            return
        if value[:1] == " ":
            value = value[1:]  # "If value starts with a U+0020 SPACE character, remove it."
        # "Field names must be compared literally, with no case folding performed."
        if field == "data":
            # "Append the field value to the data buffer, then append a single LF."
            self._data.append(value)
        elif field == "event":
            self._event_type = value  # "Set the event type buffer to field value."
        elif field == "id":
            # "If the field value does not contain U+0000 NULL, then set the last event ID
            # buffer to the field value. Otherwise, ignore the field."
            if "\x00" not in value:
                self._id_buffer = value
        elif field == "retry" and value.isascii() and value.isdigit() and len(value) <= 4300:
            # "If the field value consists of only ASCII digits, then interpret the field value
            # as an integer in base ten, and set the event stream's reconnection time to that
            # integer. Otherwise, ignore the field." Empty values are ignored too, and so are
            # values past Python's int-from-str digit limit (4300 digits, ~10**4300 ms).
            self._retry_ms = int(value)
        # "Otherwise: The field is ignored."

    def _dispatch(self, events: list[Event]) -> None:
        # Dispatch step 1: "Set the last event ID string of the event source to the value of
        # the last event ID buffer. The buffer does not get reset."
        self._last_event_id = self._id_buffer
        # Step 2: "If the data buffer is an empty string, set the data buffer and the event
        # type buffer to the empty string and return."
        if not self._data:
            self._event_type = ""
            return
        # Step 3: drop the data buffer's trailing LF (done by the join). Steps 5-6: type is
        # "message" unless the event type buffer is not empty.
        data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
        events.append(Event(self._event_type or "message", data, self._last_event_id))
        # Step 7: "Set the data buffer and the event type buffer to the empty string."
        self._data = []
        self._event_type = ""
