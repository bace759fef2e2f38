"""The SSE codec (`transports.sse`) against the WHATWG spec, under every chunking.

Every vector is fed whole, one byte at a time, split at seeded random points (empty chunks
included), and followed by trailing partial data; all must give the same events, last event
ID and retry. Property tests: parse(encode(x)) == x, and for arbitrary bytes the parser never
raises, is indifferent to chunking, and agrees with a naive whole-buffer reference parser.
"""

from __future__ import annotations

import ast
import itertools
import json
import random
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import transports.sse
from tests.support import UNIT
from transports.sse import (
    DONE,
    Event,
    SSEParser,
    encode_comment,
    encode_event,
    encode_retry,
    encode_token,
)

ROOT = Path(__file__).resolve().parents[1]
SSE_PATH = ROOT / "transports" / "sse.py"


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Outcome:
    events: list[Event]
    last_event_id: str
    retry_ms: int | None


def run_chunks(chunks: Iterable[bytes], *, eof: bool = True) -> Outcome:
    parser = SSEParser()
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    if eof:
        assert parser.feed_eof() == []
    return Outcome(events, parser.last_event_id, parser.retry_ms)


def split_at(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def random_chunks(stream: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = [rng.randint(0, len(stream)) for _ in range(rng.randint(0, max(1, len(stream) // 3)))]
    return split_at(stream, cuts)  # repeated cuts give empty chunks, which must be no-ops


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


# Contains a line end but can never form a blank line or complete a field line of the vector.
TRAILING = b"id: trailing\ndata: unterminated \xe2\x82"

CHUNKINGS = {
    "whole": lambda s: [s],
    "bytewise": bytewise,
    "random0": lambda s: random_chunks(s, 0),
    "random1": lambda s: random_chunks(s, 1),
    "random2": lambda s: random_chunks(s, 2),
    "trailing": lambda s: random_chunks(s + TRAILING, 3),
}


# --------------------------------------------------------------------------- vectors


@dataclass(frozen=True)
class Vector:
    name: str
    stream: bytes
    events: Sequence[Event] = ()
    last_event_id: str = ""
    retry_ms: int | None = None


def msg(data: str, last_event_id: str = "", type: str = "message") -> Event:
    return Event(type=type, data=data, last_event_id=last_event_id)


VECTORS = [
    # --- WHATWG HTML 9.2 examples (9.2.1 intro and 9.2.6 "Interpreting an event stream")
    Vector(
        "spec-messages",
        b"data: This is the first message.\n\n"
        b"data: This is the second message, it\ndata: has two lines.\n\n"
        b"data: This is the third message.\n\n",
        [
            msg("This is the first message."),
            msg("This is the second message, it\nhas two lines."),
            msg("This is the third message."),
        ],
    ),
    Vector(
        "spec-event-types",
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
        [msg("73857293", type="add"), msg("2153", type="remove"), msg("113411", type="add")],
    ),
    Vector("spec-stock", b"data: YHOO\ndata: +2\ndata: 10\n\n", [msg("YHOO\n+2\n10")]),
    Vector(
        "spec-four-blocks",
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
        b"data:  third event\n\n",
        [msg("first event", "1"), msg("second event", ""), msg(" third event", "")],
    ),
    # "The first block fires events with the data set to the empty string [...]. The middle
    # block fires an event with the data set to a single newline character. The last block
    # is discarded because it is not followed by a blank line."
    Vector("spec-empty-data", b"data\n\ndata\ndata\n\ndata:", [msg(""), msg("\n")]),
    Vector("spec-space", b"data:test\n\ndata: test\n\n", [msg("test"), msg("test")]),
    # --- BOM: one, at the very start only
    Vector("bom-stripped", b"\xef\xbb\xbfdata: a\n\n", [msg("a")]),
    Vector("bom-second-is-name", b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n", [msg("b")]),
    Vector("bom-in-data-kept", b"\xef\xbb\xbfdata: \xef\xbb\xbfa\n\n", [msg("\ufeffa")]),
    Vector(
        "bom-mid-stream",
        b"data: a\n\n\xef\xbb\xbfdata: b\n\ndata: c\n\n",
        [msg("a"), msg("c")],
    ),
    # --- line ends
    Vector(
        "crlf-lf-cr-mixed",
        b"data: a\r\ndata: b\rdata: c\ndata: d\r\n\r\n",
        [msg("a\nb\nc\nd")],
    ),
    Vector("cr-only", b"data: a\rdata: b\r\rdata: c\r\r", [msg("a\nb"), msg("c")]),
    Vector("cr-cr-is-two-ends", b"data: a\r\r", [msg("a")]),
    Vector("lf-cr-is-two-ends", b"data: a\n\rdata: b\n\n", [msg("a"), msg("b")]),
    Vector("crlf-crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [msg("a"), msg("b")]),
    Vector(
        "unicode-breaks-kept",
        "data: a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\x1dh\x1ei\n\n".encode(),
        [msg("a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\x1dh\x1ei")],
    ),
    Vector("blank-lines-only", b"\n\n\r\n\r\r\n", []),
    Vector("empty-stream", b"", []),
    # --- fields
    Vector("comments", b":\n: hi\ndata: a\n:: x\ndata: b\n\n", [msg("a\nb")]),
    Vector("comment-block-only", b": keepalive\n\n", []),
    Vector("one-space-stripped", b"data:  two\ndata:\tx\ndata: \n\n", [msg(" two\n\tx\n")]),
    Vector("colon-in-value", b"id: s:1\ndata: a:b: c\n\n", [msg("a:b: c", "s:1")], "s:1"),
    Vector("field-without-colon", b"data\ndata\n\nevent\ndata: x\n\n", [msg("\n"), msg("x")]),
    Vector(
        "unknown-fields",
        b"foo: bar\nDATA: A\nData: B\ndata : C\ndatax: D\ndata: ok\nEvent: e\n\n",
        [msg("ok")],
    ),
    Vector("unknown-only-no-dispatch", b"foo: bar\n\n", []),
    Vector("nul-in-data-kept", b"data: a\x00b\n\n", [msg("a\x00b")]),
    Vector(
        "event-type-reset",
        b"event: add\ndata: 1\n\ndata: 2\n\n",
        [msg("1", type="add"), msg("2")],
    ),
    Vector("event-type-reset-no-data", b"event: add\n\ndata: 2\n\n", [msg("2")]),
    Vector("event-type-empty", b"event: x\nevent:\ndata: a\n\n", [msg("a")]),
    Vector("event-type-last-wins", b"event: a\nevent: b\ndata: x\n\n", [msg("x", type="b")]),
    # --- id
    Vector("id-nul-ignored", b"id: 1\n\ndata: x\nid: a\x00b\n\n", [msg("x", "1")], "1"),
    Vector(
        "id-empty-resets",
        b"id: 1\ndata: a\n\nid\ndata: b\n\nid: 2\n\nid:\ndata: c\n\nid: 3\n\nid: \n\n",
        [msg("a", "1"), msg("b", ""), msg("c", "")],
        "",
    ),
    Vector("id-persists", b"id: 7\ndata: a\n\ndata: b\n\n", [msg("a", "7"), msg("b", "7")], "7"),
    Vector("id-only-commits", b"data: a\n\nid: 42\n\n", [msg("a")], "42"),
    Vector("id-last-wins", b"id: 1\nid: 2\ndata: a\n\n", [msg("a", "2")], "2"),
    Vector("id-leading-space", b"id:  x\n\n", [], " x"),
    Vector(
        "unterminated-event-dropped",
        b"data: a\nid: 1\n\ndata: b\nid: 2\nevent: e\n",
        [msg("a", "1")],
        "1",
    ),
    Vector("unterminated-line-dropped", b"id: 1\n\nid: 2", [], "1"),
    # --- retry: applied when the field is processed, dispatch or not
    Vector("retry", b"retry: 3000\n\n", [], "", 3000),
    Vector("retry-without-blank-line", b"retry: 1500\n", [], "", 1500),
    Vector("retry-in-dropped-event", b"data: a\nretry: 7\n", [], "", 7),
    Vector("retry-in-event", b"retry: 5\ndata: a\n\n", [msg("a")], "", 5),
    Vector("retry-zero-padded", b"retry: 0\n\nretry: 007\n\n", [], "", 7),
    Vector(
        "retry-invalid-ignored",
        "retry: 3000\nretry: 10a\nretry: -5\nretry: 1.5\nretry: \nretry\nretry:  5\n"
        "retry: \uff15\nretry: \u00b2\nretry: \u0665\nretry: 1e3\nretry: 0x10\n\n".encode(),
        [],
        "",
        3000,
    ),
    Vector("retry-too-long-ignored", b"retry: 1\nretry: " + b"9" * 5000 + b"\n\n", [], "", 1),
    Vector("retry-unterminated-ignored", b"retry: 1\nretry: 2", [], "", 1),
    # --- UTF-8
    Vector(
        "multibyte",
        "event: ünï\ndata: héllo €𝄞 日本\n\n".encode(),
        [msg("héllo €𝄞 日本", type="ünï")],
    ),
    Vector(
        "invalid-utf8",
        b"data: \xff\xfe a\xc3\ndata: \xf0\x9f\x98\ndata: \xed\xa0\x80\n\n",
        [msg("\ufffd\ufffd a\ufffd\n\ufffd\n\ufffd\ufffd\ufffd")],
    ),
    Vector("invalid-utf8-in-name", b"d\xffata: x\n\ndata: y\n\n", [msg("y")]),
    Vector("truncated-utf8-at-eof", b"data: a\n\ndata: \xe2\x82", [msg("a")]),
    # --- our own encoders
    Vector("done-marker", DONE, [msg("[DONE]")]),
    Vector(
        "token-stream",
        encode_retry(2000)
        + encode_token("s1", 0, b'{"t":"Hi"}')
        + encode_comment("hb")
        + encode_token("s1", 1, b'{"t":" there"}')
        + DONE,
        [msg('{"t":"Hi"}', "s1:0"), msg('{"t":" there"}', "s1:1"), msg("[DONE]", "s1:1")],
        "s1:1",
        2000,
    ),
]


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector(vector: Vector, chunking: str) -> None:
    outcome = run_chunks(CHUNKINGS[chunking](vector.stream))
    assert outcome == Outcome(list(vector.events), vector.last_event_id, vector.retry_ms)


def test_vector_names_unique() -> None:
    assert len({v.name for v in VECTORS}) == len(VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_trailing_data_changes_nothing_before_eof(vector: Vector) -> None:
    expected = Outcome(list(vector.events), vector.last_event_id, vector.retry_ms)
    assert run_chunks([vector.stream], eof=False) == expected
    assert run_chunks([vector.stream, TRAILING], eof=False) == expected


# --------------------------------------------------------------------------- parser state


def test_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    # Counted twice, the LF would make a blank line and split "a\nb" into two events.
    assert run_chunks([b"data: a\r", b"\n", b"data: b\r", b"\ndata: c\r\n\r", b"\n"]).events == [
        msg("a\nb\nc")
    ]
    # Chunks that decode to nothing (empty, or half a character) leave the CR pending.
    assert run_chunks([b"data: a\r", b"", b"\n", b"\r"]).events == [msg("a")]
    assert run_chunks([b"data: a\r\xc3", b"\xa9\r", b"\ndata: b\r\r"]).events == [msg("a\nb")]
    assert run_chunks([b"data: \xc3\r", b"\xa9", b"\n\n"]).events == [msg("\ufffd")]


def test_last_event_id_committed_only_at_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 1\n\ndata: a\nid: 7\n") == []
    assert parser.last_event_id == "1"
    assert parser.feed(b"\n") == [msg("a", "7")]
    assert parser.last_event_id == "7"
    assert parser.feed(b"id: 8\n") == []
    assert parser.last_event_id == "7"
    assert parser.feed(b"\n") == []  # no data: nothing dispatched, yet the id is committed
    assert parser.last_event_id == "8"
    assert parser.feed(b"id: 9\ndata: b\n") == []
    assert parser.feed_eof() == []
    assert parser.last_event_id == "8"


def test_retry_applies_when_field_is_processed() -> None:
    parser = SSEParser()
    assert parser.retry_ms is None
    parser.feed(b"data: a\nretry: 10")
    assert parser.retry_ms is None  # line not terminated yet
    parser.feed(b"\r")
    assert parser.retry_ms == 10  # before any blank line


def test_feed_eof_is_idempotent_and_final() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: b\n") == [msg("a")]
    assert parser.feed_eof() == []
    assert parser.feed_eof() == []
    with pytest.raises(RuntimeError):
        parser.feed(b"\n")


def test_bytes_fed() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\n")
    parser.feed(b"")
    parser.feed(b"\n\xe2")
    assert parser.bytes_fed == 10


def test_large_event_bytewise_completes() -> None:
    # A parser that rescans or re-concatenates its buffer on each feed is quadratic here
    # (~5e10 character operations for 300 kB) and runs into pytest's timeout; a linear one
    # needs well under a second. No clock is read: the timeout is the bound.
    payload = "x" * 300_000
    stream = b"data: " + payload.encode() + b"\n\n"
    parser = SSEParser()
    events: list[Event] = []
    view = memoryview(stream)
    for i in range(len(stream)):
        events += parser.feed(bytes(view[i : i + 1]))
    assert events == [msg(payload)]


def test_many_data_lines_one_event() -> None:
    lines = [f"line {i}" for i in range(50_000)]
    stream = "".join(f"data: {line}\n" for line in lines).encode() + b"\n"
    assert run_chunks(random_chunks(stream, 4)).events == [msg("\n".join(lines))]


# --------------------------------------------------------------------------- encoding


def test_encode_event_exact_bytes() -> None:
    assert encode_event("a") == b"data: a\n\n"
    assert encode_event("a\r\nb\rc\nd", event="e", id="1", retry_ms=5) == (
        b"retry: 5\nevent: e\nid: 1\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert encode_event("x\n", id="") == b"id: \ndata: x\ndata: \n\n"
    assert encode_event("é\u2028") == "data: é\u2028\n\n".encode()


def test_encode_event_empty_data_is_dispatched() -> None:
    # One `data:` line with an empty value makes the data buffer "\n", which is not empty.
    assert encode_event("") == b"data: \n\n"
    assert run_chunks([encode_event("")]).events == [msg("")]


def test_encode_comment_and_retry() -> None:
    assert encode_comment() == b": \n\n"
    assert encode_comment("heartbeat") == b": heartbeat\n\n"
    assert encode_retry(3000) == b"retry: 3000\n\n"
    assert encode_retry(0) == b"retry: 0\n\n"
    outcome = run_chunks([encode_comment("x"), encode_retry(250)])
    assert outcome == Outcome([], "", 250)


def test_done_constant() -> None:
    assert DONE == b"data: [DONE]\n\n"
    assert encode_event("[DONE]") == DONE


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "\r\n", "\n", "\r"])
def test_encoders_reject_line_breaks(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_event("x", id=bad)
    with pytest.raises(ValueError):
        encode_event("x", event=bad)
    with pytest.raises(ValueError):
        encode_comment(bad)


def test_encoders_reject_nul_id_and_negative_retry() -> None:
    with pytest.raises(ValueError):
        encode_event("x", id="a\x00b")
    with pytest.raises(ValueError):
        encode_event("x", retry_ms=-1)
    with pytest.raises(ValueError):
        encode_retry(-1)
    assert encode_event("x", event="a\x00b") == b"event: a\x00b\ndata: x\n\n"
    with pytest.raises(ValueError):  # UnicodeEncodeError: a lone surrogate is not UTF-8
        encode_event("\ud800")


@pytest.mark.parametrize(
    "payload",
    [
        {"t": "Hi"},
        {"t": " there", "i": 3},
        {"t": "日本語 é 🙂\u2028"},
        {"choices": [{"delta": {"content": 'a "quoted" \\ line\nbreak'}}]},
        {},
    ],
)
def test_encode_token_equals_encode_event(payload: object) -> None:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    assert b"\n" not in body and b"\r" not in body
    token = encode_token("stream-1", 41, body)
    assert token == b"id: stream-1:41\ndata: " + body + b"\n\n"
    assert token == encode_event(body.decode(), id="stream-1:41")
    assert run_chunks(bytewise(token)).events == [msg(body.decode(), "stream-1:41")]


@given(
    stream_id=st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=20),
    seq=st.integers(min_value=0, max_value=2**63),
    payload=st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=50),
)
def test_encode_token_equals_encode_event_property(stream_id: str, seq: int, payload: str) -> None:
    body = payload.encode()
    assert encode_token(stream_id, seq, body) == encode_event(payload, id=f"{stream_id}:{seq}")


# --------------------------------------------------------------------------- properties

LINE_BREAKS = st.sampled_from(["\n", "\r", "\r\n", "\u2028", "\x85", "\x0b", "\x0c", "\ufeff"])
DATA = st.lists(st.one_of(st.text(max_size=8), LINE_BREAKS), max_size=8).map("".join)
SINGLE_LINE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
ID = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=12)
BLOCK = st.tuples(DATA, st.none() | SINGLE_LINE, st.none() | ID, st.none() | st.integers(0, 10**9))


def normalise(data: str) -> str:
    return data.replace("\r\n", "\n").replace("\r", "\n")


def cuts_for(stream: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=30)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(blocks=st.lists(BLOCK, max_size=8), comments=st.booleans(), data=st.data())
def test_parse_encode_roundtrip(
    blocks: list[tuple[str, str | None, str | None, int | None]],
    comments: bool,
    data: st.DataObject,
) -> None:
    stream = b""
    expected: list[Event] = []
    last_id = ""
    retry: int | None = None
    for payload, event, id_, retry_ms in blocks:
        stream += encode_event(payload, event=event, id=id_, retry_ms=retry_ms)
        if comments:
            stream += encode_comment("tick")
        last_id = last_id if id_ is None else id_
        retry = retry if retry_ms is None else retry_ms
        expected.append(Event(event or "message", normalise(payload), last_id))
    want = Outcome(expected, last_id, retry)
    assert run_chunks([stream]) == want
    assert run_chunks(split_at(stream, data.draw(cuts_for(stream)))) == want


def reference_parse(stream: bytes) -> Outcome:
    """A naive transliteration of WHATWG 9.2.6 over the whole, already-decoded stream."""
    text = stream.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    *lines, _unterminated = re.split(r"\r\n|\r|\n", text)
    events: list[Event] = []
    data = event_type = id_buffer = last_id = ""
    retry: int | None = None
    for line in lines:
        if line == "":
            last_id = id_buffer
            if data:
                events.append(Event(event_type or "message", data[:-1], last_id))
            data = event_type = ""
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event_type = value
        elif field == "data":
            data += value + "\n"
        elif field == "id" and "\x00" not in value:
            id_buffer = value
        elif field == "retry" and re.fullmatch("[0-9]{1,4300}", value):
            retry = int(value)
    return Outcome(events, last_id, retry)


TOKENS = [
    b"\n", b"\r", b"\r\n", b"\n\n", b":", b": ", b" ", b"data", b"event", b"id", b"retry",
    b"data: ", b"id: ", b"retry: ", b"1", b"42", b"x", b"\x00", b"\xef\xbb\xbf", b"\xef",
    b"\xbb", b"\xbf", b"\xc3", b"\xa9", b"\xf0\x9f", b"\x98\x80", b"\xff", b"\xe2\x80\xa8",
    b"\xc2\x85", b"\x0b", b"\x0c",
]  # fmt: skip
STREAMS = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=4)), max_size=60).map(b"".join),
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(stream=STREAMS, data=st.data())
def test_fuzz_any_bytes_any_chunking(stream: bytes, data: st.DataObject) -> None:
    # Contract: never raises on any input (SSEError is reserved, never needed), and the result
    # depends on the bytes only, not on how they were chunked.
    whole = run_chunks([stream])
    assert whole == reference_parse(stream)
    assert run_chunks(bytewise(stream)) == whole
    assert run_chunks(split_at(stream, data.draw(cuts_for(stream)))) == whole
    for event in whole.events:
        assert event.type and "\r" not in event.data


# --------------------------------------------------------------------------- sans-I/O


FORBIDDEN = {"asyncio", "aiohttp"}


def test_module_source_imports_no_io_framework() -> None:
    tree = ast.parse(SSE_PATH.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
    assert imported <= set(sys.stdlib_module_names) | {"__future__", "streams"}
    assert Path(transports.sse.__file__ or "").resolve() == SSE_PATH


def test_importing_module_loads_no_io_framework() -> None:
    # Loaded by path, so the check covers this module (and what it imports), not whatever the
    # `transports` package __init__ may import for its other members.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('sse_under_test', {str(SSE_PATH)!r})\n"
        "module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60 * UNIT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_encode_open_commits_the_stream_id_without_dispatching() -> None:
    block = transports.sse.encode_open("ab12", 7, 1500)
    assert block == b"retry: 1500\nid: ab12:7\n\n"
    parser = transports.sse.SSEParser()
    assert parser.feed(block) == []
    assert parser.last_event_id == "ab12:7"
    assert parser.retry_ms == 1500
