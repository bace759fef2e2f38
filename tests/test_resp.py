"""The RESP2 codec (`streams.resp`) against the Redis protocol spec, under every chunking.

Every reply vector is fed whole, one byte at a time, split in two at every point, split at
seeded random points (empty chunks included), and followed by an unfinished reply; all must
give the same replies. Every broken vector must raise ProtocolError under every chunking and
leave the parser failed. Properties: parse(encode(x)) == x for random nested values, and for
arbitrary bytes only ProtocolError escapes and the verdict does not depend on the chunking.
Purity (stdlib only, no asyncio) is checked with the other codecs in tests/test_codecs.py.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.errors import ProtocolError
from streams.resp import Parser, ReplyError, encode_command, encode_commands

# --------------------------------------------------------------------------- helpers


def run_chunks(chunks: Iterable[bytes], parser: Parser | None = None) -> list[object]:
    parser = parser or Parser()
    replies: list[object] = []
    for chunk in chunks:
        parser.feed(chunk)
        replies += parser.replies()
    return replies


def split_at(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def random_chunks(stream: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = [rng.randint(0, len(stream)) for _ in range(rng.randint(0, max(1, len(stream) // 3)))]
    return split_at(stream, cuts)  # repeated cuts give empty chunks, which must be no-ops


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def every_split(stream: bytes) -> Iterable[list[bytes]]:
    return (split_at(stream, [i]) for i in range(len(stream) + 1))


# A reply cut short: its bulk body and final CRLF are still to come, so it yields nothing.
TRAILING = b"*2\r\n$5\r\nhel"

CHUNKINGS: dict[str, Callable[[bytes], list[bytes]]] = {
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
    replies: Sequence[object]


VECTORS = [
    # --- the spec's own examples (redis.io/docs/reference/protocol-spec)
    Vector("spec-simple-string", b"+OK\r\n", ["OK"]),
    Vector(
        "spec-errors",
        b"-ERR unknown command 'asdf'\r\n"
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        [
            ReplyError("ERR unknown command 'asdf'"),
            ReplyError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ],
    ),
    Vector("spec-integers", b":0\r\n:1000\r\n", [0, 1000]),
    Vector("spec-bulk", b"$5\r\nhello\r\n", [b"hello"]),
    Vector("spec-empty-bulk", b"$0\r\n\r\n", [b""]),
    Vector("spec-null-bulk", b"$-1\r\n", [None]),
    Vector("spec-empty-array", b"*0\r\n", [[]]),
    Vector("spec-array-of-bulks", b"*2\r\n$5\r\nhello\r\n$5\r\nworld\r\n", [[b"hello", b"world"]]),
    Vector("spec-array-of-integers", b"*3\r\n:1\r\n:2\r\n:3\r\n", [[1, 2, 3]]),
    Vector(
        "spec-mixed-array",
        b"*5\r\n:1\r\n:2\r\n:3\r\n:4\r\n$5\r\nhello\r\n",
        [[1, 2, 3, 4, b"hello"]],
    ),
    Vector(
        "spec-nested-arrays",
        b"*2\r\n*3\r\n:1\r\n:2\r\n:3\r\n*2\r\n+Hello\r\n-World\r\n",
        [[[1, 2, 3], ["Hello", ReplyError("World")]]],
    ),
    Vector("spec-null-array", b"*-1\r\n", [None]),
    Vector(
        "spec-null-element",
        b"*3\r\n$5\r\nhello\r\n$-1\r\n$5\r\nworld\r\n",
        [[b"hello", None, b"world"]],
    ),
    Vector("spec-llen-reply", b":48293\r\n", [48293]),
    # --- edges of each type
    Vector("empty-simple-string", b"+\r\n", [""]),
    Vector("empty-error", b"-\r\n", [ReplyError("")]),
    Vector("negative-integer", b":-52\r\n", [-52]),
    Vector("minus-zero", b":-0\r\n", [0]),
    Vector(
        "int64-bounds",
        b":9223372036854775807\r\n:-9223372036854775808\r\n",
        [2**63 - 1, -(2**63)],
    ),
    Vector("leading-zeros", b":007\r\n$03\r\nabc\r\n", [7, b"abc"]),
    Vector("bulk-binary-safe", b"$8\r\n\r\n\x00\xff$1\r\n\r\n", [b"\r\n\x00\xff$1\r\n"]),
    Vector("bulk-of-crlf", b"$2\r\n\r\n\r\n", [b"\r\n"]),
    Vector("simple-string-utf8", "+héllo 日本\r\n".encode(), ["héllo 日本"]),
    Vector("error-invalid-utf8-replaced", b"-ERR bad \xff\r\n", [ReplyError("ERR bad \ufffd")]),
    Vector("null-array-in-array", b"*2\r\n*-1\r\n*0\r\n", [[None, []]]),
    Vector("deep-but-allowed", b"*1\r\n" * 8 + b":1\r\n", [[[[[[[[[1]]]]]]]]]),
    Vector(
        "arrays-closing-together",
        b"*2\r\n*2\r\n*1\r\n:1\r\n:2\r\n:3\r\n:4\r\n",
        [[[[1], 2], 3], 4],
    ),
    # --- what the token hub's Redis log will see
    Vector(
        "xadd-pipeline",
        b"$15\r\n1700000000000-0\r\n$15\r\n1700000000000-1\r\n"
        b"-ERR The ID specified in XADD is equal or smaller than the target stream top item\r\n"
        b"$15\r\n1700000000001-0\r\n",
        [
            b"1700000000000-0",
            b"1700000000000-1",
            ReplyError(
                "ERR The ID specified in XADD is equal or smaller than the target stream top item"
            ),
            b"1700000000001-0",
        ],
    ),
    Vector(
        "xread-reply",
        b"*1\r\n*2\r\n$3\r\nlog\r\n*2\r\n"
        b"*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\np\r\n$2\r\n{}\r\n"
        b"*2\r\n$3\r\n2-0\r\n*2\r\n$1\r\np\r\n$3\r\n{ }\r\n",
        [[[b"log", [[b"1-0", [b"p", b"{}"]], [b"2-0", [b"p", b"{ }"]]]]]],
    ),
    Vector("xread-timeout", b"*-1\r\n", [None]),
    Vector(
        "unblocked",
        b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n",
        [ReplyError("UNBLOCKED client unblocked via CLIENT UNBLOCK")],
    ),
    Vector("our-own-command", encode_command("SET", b"k", 5), [[b"SET", b"k", b"5"]]),
]


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector(vector: Vector, chunking: str) -> None:
    assert run_chunks(CHUNKINGS[chunking](vector.stream)) == list(vector.replies)


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_split_at_every_point(vector: Vector) -> None:
    for chunks in every_split(vector.stream):
        assert run_chunks(chunks) == list(vector.replies), chunks


def test_vector_names_unique() -> None:
    assert len({v.name for v in VECTORS}) == len(VECTORS)


# Bytes that break RESP2, each with the limits it is parsed under (max_bulk, max_depth).
BROKEN = {
    "unknown-type-byte": (b"?\r\n", {}),
    "resp3-null": (b"_\r\n", {}),
    "resp3-map": (b"%1\r\n+a\r\n+b\r\n", {}),
    "inline-reply": (b"OK\r\n", {}),
    "bad-type-after-good": (b"+OK\r\n:1\r\n!\r\n", {}),
    "bulk-length-not-a-number": (b"$x\r\nabc\r\n", {}),
    "bulk-length-negative": (b"$-2\r\n", {}),
    "bulk-length-plus-sign": (b"$+3\r\nabc\r\n", {}),
    "bulk-length-spaces": (b"$ 3\r\nabc\r\n", {}),
    "bulk-length-empty": (b"$\r\n\r\n", {}),
    "bulk-missing-crlf": (b"$3\r\nabcd\r\n", {}),
    "bulk-lf-only": (b"$3\r\nabc\n\r\n", {}),
    "bulk-over-max": (b"$17\r\n", {"max_bulk": 16}),
    "bulk-length-too-many-digits": (b"$" + b"0" * 20 + b"3\r\nabc\r\n", {}),
    "array-length-bad": (b"*1x\r\n:1\r\n", {}),
    "array-length-negative": (b"*-2\r\n", {}),
    "array-over-max": (b"*17\r\n", {"max_bulk": 16}),
    "too-deep": (b"*1\r\n" * 9 + b":1\r\n", {}),
    "too-deep-custom": (b"*1\r\n*1\r\n*1\r\n", {"max_depth": 2}),
    "integer-bad": (b":1.5\r\n", {}),
    "integer-empty": (b":\r\n", {}),
    "integer-plus": (b":+1\r\n", {}),
    "integer-underscore": (b":1_000\r\n", {}),
    "integer-over-int64": (b":9223372036854775808\r\n", {}),
    "integer-under-int64": (b":-9223372036854775809\r\n", {}),
    "bare-lf-line-end": (b":1\n:2\r\n", {}),
    "bare-cr-in-simple-string": (b"+O\rK\r\n", {}),
    "bare-lf-in-error": (b"-ERR a\nb\r\n", {}),
    "numeric-line-never-ends": (b":" + b"1" * 30, {}),
    "simple-line-over-max": (b"+" + b"a" * 20, {"max_bulk": 16}),
    "simple-line-over-max-terminated": (b"+" + b"a" * 16 + b"\r\n", {"max_bulk": 16}),
    "element-type-byte-bad": (b"*2\r\n:1\r\n\r\n", {}),
}


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_stream_raises_and_stays_failed(name: str, chunking: str) -> None:
    stream, limits = BROKEN[name]
    parser = Parser(**limits)
    with pytest.raises(ProtocolError):
        run_chunks(CHUNKINGS[chunking](stream), parser)
    with pytest.raises(ProtocolError):
        parser.replies()
    with pytest.raises(ProtocolError):
        parser.feed(b"+OK\r\n")
    with pytest.raises(ProtocolError):
        parser.feed(b"")


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_stream_split_at_every_point(name: str) -> None:
    stream, limits = BROKEN[name]
    for chunks in every_split(stream):
        with pytest.raises(ProtocolError):
            run_chunks(chunks, Parser(**limits))


def test_limits_are_inclusive() -> None:
    sixteen = b"x" * 16
    assert run_chunks([b"$16\r\n" + sixteen + b"\r\n"], Parser(max_bulk=16)) == [sixteen]
    assert run_chunks([b"+" + sixteen[1:] + b"\r\n"], Parser(max_bulk=16)) == [sixteen[1:].decode()]
    assert run_chunks([b"*2\r\n*1\r\n:1\r\n:2\r\n"], Parser(max_depth=2)) == [[[1], 2]]
    # The longest numeric line, its CR in and its LF not yet: waiting, not an error.
    parser = Parser()
    parser.feed(b":-9223372036854775808\r")
    assert parser.replies() == []
    parser.feed(b"\n")
    assert parser.replies() == [-(2**63)]


# --------------------------------------------------------------------------- parser state


def test_replies_are_removed_once_returned() -> None:
    parser = Parser()
    parser.feed(b"+a\r\n:1\r\n$1\r")
    assert parser.replies() == ["a", 1]
    assert parser.replies() == []
    parser.feed(b"\nb\r\n*1\r\n")
    assert parser.replies() == [b"b"]
    parser.feed(b"*0\r\n")
    assert parser.replies() == [[[]]]


def test_reply_error_is_a_value_with_a_kind() -> None:
    assert ReplyError("ERR The ID specified in XADD is equal or smaller").kind == "ERR"
    assert ReplyError("WRONGTYPE Operation against a key").kind == "WRONGTYPE"
    assert ReplyError("NOSCRIPT No matching script.").kind == "NOSCRIPT"
    assert ReplyError("UNBLOCKED").kind == "UNBLOCKED"
    assert ReplyError("").kind == ""
    assert ReplyError("ERR x").message == "ERR x"
    assert not isinstance(ReplyError("ERR x"), BaseException)


def test_bulk_values_are_bytes_whatever_was_fed() -> None:
    parser = Parser()
    parser.feed(bytearray(b"$2\r\nab\r\n*1\r\n$1\r\nc\r\n"))  # type: ignore[arg-type]
    replies = parser.replies()
    assert replies == [b"ab", [b"c"]]
    assert type(replies[0]) is bytes
    assert type(replies[1][0]) is bytes  # type: ignore[index]


def test_large_bulk_bytewise_completes() -> None:
    # A parser that re-parses or re-copies its buffer on every feed is quadratic here
    # (~10**11 byte operations) and runs into pytest's timeout; a linear one needs a second or
    # two. No clock is read: the timeout is the bound.
    payload = bytes(range(256)) * 1200  # 300 kB, CR and LF included
    stream = b"$%d\r\n" % len(payload) + payload + b"\r\n"
    assert run_chunks(bytewise(stream)) == [payload]


def test_long_simple_line_bytewise_completes() -> None:
    text = "e" * 300_000
    assert run_chunks(bytewise(b"-ERR " + text.encode() + b"\r\n")) == [ReplyError("ERR " + text)]


def test_large_array_in_random_chunks() -> None:
    ids = [b"%d-0" % i for i in range(50_000)]
    stream = b"*%d\r\n" % len(ids) + b"".join(b"$%d\r\n%b\r\n" % (len(i), i) for i in ids)
    assert run_chunks(random_chunks(stream, 4)) == [ids]


def test_thousands_of_pipelined_replies_in_reads_of_one_mss() -> None:
    ids = [b"1700000000000-%d" % i for i in range(5_000)]
    stream = b"".join(b"$%d\r\n%b\r\n" % (len(i), i) for i in ids)
    reads = [stream[i : i + 1448] for i in range(0, len(stream), 1448)]
    assert run_chunks(reads) == ids


# --------------------------------------------------------------------------- encoding


def test_encode_command_exact_bytes() -> None:
    assert encode_command(b"PING") == b"*1\r\n$4\r\nPING\r\n"
    assert encode_command("LLEN", "mylist") == b"*2\r\n$4\r\nLLEN\r\n$6\r\nmylist\r\n"  # the spec's
    assert encode_command("XADD", b"s", "MAXLEN", "~", 1000, "*", "p", b'{"t":1}') == (
        b"*8\r\n$4\r\nXADD\r\n$1\r\ns\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$4\r\n1000\r\n"
        b'$1\r\n*\r\n$1\r\np\r\n$7\r\n{"t":1}\r\n'
    )
    assert encode_command("SET", "k", "é") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n"
    assert encode_command("SET", "k", b"") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
    assert encode_command("INCRBY", "k", -12) == b"*3\r\n$6\r\nINCRBY\r\n$1\r\nk\r\n$3\r\n-12\r\n"
    assert encode_command("SET", "k", b"a\r\nb") == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n"
    )


def test_encode_command_accepts_subclasses_and_buffers() -> None:
    class Name(str):
        pass

    class Count(int):
        pass

    assert encode_command(Name("GET"), Count(3), bytearray(b"x"), memoryview(b"yz")) == (  # type: ignore[arg-type]
        encode_command("GET", 3, b"x", b"yz")
    )


@pytest.mark.parametrize("bad", [True, False, 1.5, None, ["a"], object()])
def test_encode_command_rejects_other_types(bad: object) -> None:
    with pytest.raises(TypeError):
        encode_command("SET", "k", bad)  # type: ignore[arg-type]


def test_encode_command_needs_a_name() -> None:
    with pytest.raises(ValueError):
        encode_command()


def test_encode_commands_is_a_pipeline() -> None:
    commands = [("XADD", "s", "*", "p", b"1"), (b"PING",), ["GET", "k"]]
    assert encode_commands(commands) == b"".join(encode_command(*c) for c in commands)
    assert encode_commands(iter(commands)) == encode_commands(commands)
    assert encode_commands([]) == b""
    # A command is a RESP array of bulk strings, so it parses back as one.
    assert run_chunks(bytewise(encode_commands(commands))) == [
        [b"XADD", b"s", b"*", b"p", b"1"],
        [b"PING"],
        [b"GET", b"k"],
    ]


# --------------------------------------------------------------------------- properties

ARGS = st.lists(
    st.one_of(st.binary(max_size=20), st.text(max_size=10), st.integers(-(2**70), 2**70)),
    min_size=1,
    max_size=8,
)


def as_bytes(arg: bytes | str | int) -> bytes:
    if isinstance(arg, bytes):
        return arg
    return arg.encode() if isinstance(arg, str) else str(arg).encode()


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(commands=st.lists(ARGS, max_size=5), data=st.data())
def test_encode_then_parse_round_trips(
    commands: list[list[bytes | str | int]], data: st.DataObject
) -> None:
    stream = encode_commands(commands)
    want = [[as_bytes(a) for a in command] for command in commands]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    assert run_chunks([stream]) == want
    assert run_chunks(split_at(stream, cuts)) == want


class NullArray:
    """Stands for `*-1` in generated values; parses to None."""


def reference_encode(value: object) -> bytes:
    """A naive encoder for any RESP2 value, to feed the parser what a server could send."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, ReplyError):
        return b"-" + value.message.encode() + b"\r\n"
    if isinstance(value, str):
        return b"+" + value.encode() + b"\r\n"
    if isinstance(value, int):
        return b":" + str(value).encode() + b"\r\n"
    if isinstance(value, bytes):
        return b"$" + str(len(value)).encode() + b"\r\n" + value + b"\r\n"
    if isinstance(value, NullArray):
        return b"*-1\r\n"
    assert isinstance(value, list)
    return b"*" + str(len(value)).encode() + b"\r\n" + b"".join(map(reference_encode, value))


def expected(value: object) -> object:
    if isinstance(value, NullArray):
        return None
    if isinstance(value, list):
        return [expected(v) for v in value]
    return value


LINE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
SCALARS = st.one_of(
    LINE,
    LINE.map(ReplyError),
    st.integers(-(2**63), 2**63 - 1),
    st.binary(max_size=20),
    st.none(),
    st.just(NullArray()),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=20)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(values=st.lists(VALUES, max_size=6), data=st.data())
def test_any_resp2_value_parses_under_any_chunking(
    values: list[object], data: st.DataObject
) -> None:
    stream = b"".join(map(reference_encode, values))
    want = [expected(v) for v in values]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    assert run_chunks([stream], Parser(max_depth=64)) == want
    assert run_chunks(split_at(stream, cuts), Parser(max_depth=64)) == want


def verdict(chunks: Iterable[bytes]) -> tuple[bool, list[object]]:
    """(failed, replies): the replies only when the parser did not fail, since replies before
    a failure depend on where the chunks happened to end."""
    parser = Parser(max_bulk=16, max_depth=3)
    try:
        return False, run_chunks(chunks, parser)
    except ProtocolError:
        return True, []


TOKENS = [
    b"\r\n", b"\r", b"\n", b"+", b"-", b":", b"$", b"*", b"-1", b"0", b"1", b"2", b"3", b"17",
    b"9223372036854775808", b"OK", b"ERR x", b"\xff", b"_", b"%", b" ",
]  # fmt: skip
STREAMS = st.one_of(
    st.binary(max_size=100),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=3)), max_size=40).map(b"".join),
    # mostly well-formed: whole replies with the odd token between them
    st.lists(st.one_of(VALUES.map(reference_encode), st.sampled_from(TOKENS)), max_size=8).map(
        b"".join
    ),
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(stream=STREAMS, data=st.data())
def test_fuzz_any_bytes_any_chunking(stream: bytes, data: st.DataObject) -> None:
    # Contract: only ProtocolError escapes (anything else fails the test), and whether the
    # stream is broken, and if not what it says, depends on the bytes, not on the chunking.
    whole = verdict([stream])
    assert verdict(bytewise(stream)) == whole
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert verdict(split_at(stream, cuts)) == whole
