"""TLS over a counted TCP connection, with every record on the wire counted, not estimated.

`TLSConn` is a `Connection` layered on a TCP `Conn`: the kernel still counts the TCP payload
(now TLS ciphertext) and the HTTP layer above reads and writes plaintext. The TLS engine is
Python's `ssl.SSLObject` driven sans-I/O (`SSLContext.wrap_bio` with two `MemoryBIO`s): we
move the ciphertext ourselves, so we see every byte of it.

Incoming ciphertext is split into TLS records here (RFC 8446 5.1, `TLSPlaintext`: a 5-byte
header, ContentType(1) legacy_record_version(2) length(2), then `length` bytes) and handed
to the SSLObject ONE COMPLETE RECORD AT A TIME, after which we read plaintext until it wants
more. A record fed before the handshake completed is handshake bytes; after it, a record
that yields plaintext carried application data (counted with its wire bytes, header
included), and one that yields none was control: NewSessionTicket (RFC 8446 4.6.1),
KeyUpdate (4.6.3) or an alert such as close_notify (6.1). In TLS 1.3 all of these travel as
outer type application_data (5.2), so only the engine's output tells them apart. Outgoing
records are parsed the same way from what the SSLObject writes, attributed by what produced
them: the handshake, our write (data) or everything else (control: close_notify). Thus
bytes_down == handshake + data-record + control bytes, exactly, when everything the kernel
received was read; and data-record bytes minus plaintext is the per-record overhead, 22
bytes in TLS 1.3 with an AEAD suite (5 header + 1 inner content type + 16 tag; no padding,
which OpenSSL does not add unless asked).

`tls_connector(ca_file, ...)` builds one client SSLContext trusting only `ca_file` (the lab
CA of netem/pki.py) and returns a `Connector` that opens TCP, then runs the handshake
(timed), optionally resuming the previous session to the same target. Errors are translated
here: an untrusted certificate or an unusable CA file is not worth retrying; any other TLS
or socket failure is a retryable TransportError with a one-line message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ssl
import time
from collections.abc import Callable, MutableMapping, Sequence

from clients.net import READ_SIZE, Conn, Connector, ConnStats, Target
from streams.errors import TransportError

HEADER_BYTES = 5  # RFC 8446 5.1: ContentType, legacy_record_version, length
# RFC 8446 5.2: TLSCiphertext.length MUST NOT exceed 2^14 + 256; the engine raises
# record_overflow for more, we only need to know where a record ends.

X509_V_ERR_HOSTNAME_MISMATCH = 62  # OpenSSL's x509_vfy.h: the name, not the chain, is wrong

SessionCache = MutableMapping[Target, ssl.SSLSession]


def take_record(buf: bytearray) -> bytes | None:
    """Remove the first TLS record from `buf` and return it, header included; None while
    it is incomplete (the rest has not arrived)."""
    if len(buf) < HEADER_BYTES:
        return None
    end = HEADER_BYTES + int.from_bytes(buf[3:5], "big")  # RFC 8446 5.1: uint16 length
    if end > len(buf):
        return None
    record = bytes(buf[:end])
    del buf[:end]
    return record


@dataclasses.dataclass
class _Counts:
    """Ciphertext by phase and kind for one direction (wire bytes, record headers included)."""

    handshake_bytes: int = 0
    records: int = 0  # post-handshake records that carried application data
    record_bytes: int = 0
    control_bytes: int = 0  # post-handshake records without application data
    plaintext: int = 0


class TLSConn:
    """A client TLS connection over a TCP `Conn`: plaintext in and out, ciphertext counted.

    `handshake()` must complete before `read`/`write`; `tls_connector` does that."""

    stack = "tls"

    def __init__(
        self,
        inner: Conn,
        context: ssl.SSLContext,
        server_name: str,
        session: ssl.SSLSession | None = None,
        remember: Callable[[ssl.SSLSession], None] | None = None,
    ) -> None:
        self._inner = inner
        self._remember = remember  # told the session to resume next time, at close
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            self._obj = context.wrap_bio(self._in, self._out, server_hostname=server_name,
                                         session=session)  # fmt: skip
        except ValueError:  # a session of another SSLContext: start afresh
            self._obj = context.wrap_bio(self._in, self._out, server_hostname=server_name)
        self.index = 0
        self.last_recv_ns = 0  # time.time_ns() when the TCP read returned (before decryption)
        self.last_recv_perf_ns = 0
        self.handshake_ns = -1
        self.handshaken = False
        self.stats: ConnStats | None = None
        self._up, self._down = _Counts(), _Counts()
        self._cipher = bytearray()  # received ciphertext not yet a whole record
        self._plain = bytearray()  # decrypted, not yet read
        self._tcp_done = False  # the peer's FIN seen, or the connection broke
        self._tls_eof = False  # close_notify received, or the TCP EOF taken as the end

    async def handshake(self) -> None:
        """Run the TLS handshake; ssl.SSLError (e.g. SSLCertVerificationError) propagates
        for the connector to translate, a closed connection is a TransportError."""
        start = time.perf_counter_ns()
        while True:
            try:
                self._obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            await self._send("handshake")
            record = await self._next_record()
            if record is None:
                raise TransportError("connection closed during the TLS handshake")
            self._down.handshake_bytes += len(record)
            self._in.write(record)
        await self._send("handshake")  # TLS 1.3: our Finished (and ChangeCipherSpec)
        self.handshake_ns = time.perf_counter_ns() - start
        self.handshaken = True

    async def _next_record(self) -> bytes | None:
        """The next whole record, reading TCP as needed; None at the TCP EOF."""
        while True:
            record = take_record(self._cipher)
            if record is not None:
                return record
            if self._tcp_done:
                return None
            try:
                data = await self._inner.read(READ_SIZE)
            except TransportError:
                self._tcp_done = True
                raise
            self.last_recv_ns = self._inner.last_recv_ns
            self.last_recv_perf_ns = self._inner.last_recv_perf_ns
            if not data:
                self._tcp_done = True
            self._cipher += data

    def _decrypt(self, record: bytes) -> None:
        """Feed one post-handshake record and read all the plaintext it yields."""
        self._in.write(record)
        plain = 0
        try:
            while chunk := self._obj.read(READ_SIZE):
                self._plain += chunk
                plain += len(chunk)
            self._tls_eof = True  # b"": the peer's close_notify (RFC 8446 6.1)
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            # close_notify, as an exception; SSLEOFError (a ragged EOF) needs write_eof(),
            # which we never call: `read` sees the TCP EOF at the record layer itself
            self._tls_eof = True
        except ssl.SSLError as exc:
            raise TransportError(f"TLS error while receiving: {_reason(exc)}") from exc
        if plain:
            self._down.records += 1
            self._down.record_bytes += len(record)
            self._down.plaintext += plain
        else:
            self._down.control_bytes += len(record)

    async def read(self, size: int = READ_SIZE) -> bytes:
        """Up to `size` plaintext bytes; b"" at the end (close_notify or the TCP EOF)."""
        while not self._plain:
            if self._tls_eof:
                return b""
            record = await self._next_record()
            if record is None:
                if self._cipher:
                    raise TransportError("connection closed in the middle of a TLS record")
                # A ragged EOF: the peer closed TCP without close_notify (RFC 8446 6.1 says it
                # MUST send one; many servers do not; OpenSSL would call it SSLEOFError). Taken
                # as EOF, as browsers and Python's suppress_ragged_eofs do: the HTTP framing
                # above (Content-Length, the last chunk, [DONE]) notices a cut body.
                self._tls_eof = True
                return b""
            self._decrypt(record)
            await self._send("control")  # e.g. our KeyUpdate answering the peer's
        data = bytes(self._plain[:size])
        del self._plain[:size]
        return data

    async def write(self, data: bytes) -> None:
        """Encrypt and send `data` (records of at most 2^14 bytes of plaintext each)."""
        view = memoryview(data)
        try:
            while view:
                view = view[self._obj.write(view) :]
        except ssl.SSLError as exc:
            raise TransportError(f"TLS error while sending: {_reason(exc)}") from exc
        self._up.plaintext += len(data)
        # A KeyUpdate the engine sends lazily with our next write would be counted as data
        # here; OpenSSL answers an update_requested at once while reading, so this is moot.
        await self._send("data")

    async def _send(self, kind: str) -> None:
        """Send what the engine wrote, counting its records as `kind`. No await comes
        between taking the bytes and handing them to the socket, so records from two tasks
        still leave in the engine's order (their sequence numbers, RFC 8446 5.3)."""
        out = self._out.read()
        if not out:
            return
        if kind == "handshake":
            self._up.handshake_bytes += len(out)
        elif kind == "data":
            buf = bytearray(out)
            while (record := take_record(buf)) is not None:
                self._up.records += 1
                self._up.record_bytes += len(record)
            self._up.control_bytes += len(buf)  # never: the engine writes whole records
        else:
            self._up.control_bytes += len(out)
        try:
            await self._inner.write(out)
        except TransportError:
            self._tcp_done = True
            raise

    async def aclose(self) -> ConnStats:
        """Send close_notify (best effort, not waiting for the peer's), close TCP, count."""
        if self.stats is not None:
            return self.stats
        # RFC 8446 6.1: close_notify before closing our write side. Not once the peer's FIN
        # is in (its socket may be gone: our bytes would only draw a reset, and Conn.aclose
        # would wait for an ack that never comes), nor on a broken connection.
        # A failed handshake leaves the engine's alert (e.g. bad_certificate) to send.
        if not self._tcp_done:
            kind = "control" if self.handshaken else "handshake"
            if self.handshaken:
                # SSLWantReadError: ours is written, the peer's is not read (nor waited for)
                with contextlib.suppress(ssl.SSLError):
                    self._obj.unwrap()
            with contextlib.suppress(TransportError):  # best effort: we are closing anyway
                await self._send(kind)
        inner = await self._inner.aclose()
        up, down = self._up, self._down
        self.stats = dataclasses.replace(
            inner,
            index=self.index,
            app_bytes_up=up.plaintext,
            app_bytes_down=down.plaintext,
            stack=self.stack,
            handshake_ns=self.handshake_ns,
            tls_handshake_bytes_up=up.handshake_bytes,
            tls_handshake_bytes_down=down.handshake_bytes,
            tls_records_up=up.records,
            tls_record_bytes_up=up.record_bytes,
            tls_control_bytes_up=up.control_bytes,
            tls_records_down=down.records,
            tls_record_bytes_down=down.record_bytes,
            tls_control_bytes_down=down.control_bytes,
        )
        if self.handshaken:
            cipher = self._obj.cipher()
            self.stats = dataclasses.replace(
                self.stats,
                tls_version=self._obj.version() or "",
                tls_cipher=cipher[0] if cipher else "",
                alpn=self._obj.selected_alpn_protocol() or "",
                tls_resumed=self._obj.session_reused,
            )
            session = self.session
            if session is not None and self._remember is not None:
                self._remember(session)
        return self.stats

    @property
    def alpn(self) -> str:
        """The protocol the server chose by ALPN ("h2", "http/1.1"), "" if none or not yet."""
        return (self._obj.selected_alpn_protocol() or "") if self.handshaken else ""

    @property
    def session(self) -> ssl.SSLSession | None:
        """The session to resume next time: in TLS 1.3 it comes in a NewSessionTicket after
        the handshake (RFC 8446 4.6.1), so it is worth taking only once the ticket was read."""
        if not self.handshaken:
            return None
        session = self._obj.session
        if session is None or (self._obj.version() == "TLSv1.3" and not session.has_ticket):
            return None
        return session


def client_context(ca_file: str, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
    """A client SSLContext trusting `ca_file` only; an unusable file is a non-retryable
    TransportError naming it."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:  # missing, unreadable, or no certificate in it
        raise TransportError(
            f"TLS: cannot load CA file {ca_file}: {_reason(exc)}", retryable=False
        ) from exc
    context.set_alpn_protocols(list(alpn))
    return context


def tls_connector(
    ca_file: str,
    server_name: str = "localhost",
    alpn: Sequence[str] = ("http/1.1",),
    session_cache: SessionCache | None = None,
) -> Connector:
    """A `Connector` speaking TLS to `server_name` (SNI and the name checked), trusting only
    `ca_file`, offering `alpn`. With `session_cache` (a dict, keyed by target) each
    connection resumes the session of the previous one to the same target and leaves its
    own there at close. The CA file is loaded now: an unusable one fails here, once."""
    context = client_context(ca_file, alpn)

    async def connect(target: Target) -> TLSConn:
        try:
            inner = await Conn.open(target.host, target.port)
        except OSError as exc:
            raise TransportError(
                f"cannot connect to {target.authority}: {exc.strerror or exc}"
            ) from exc
        session, remember = None, None
        if session_cache is not None:
            session = session_cache.get(target)
            remember = functools.partial(session_cache.__setitem__, target)
        conn = TLSConn(inner, context, server_name, session, remember)
        try:
            await conn.handshake()
        except BaseException as exc:  # cancelled too: the socket is closed either way
            await conn.aclose()
            if isinstance(exc, ssl.SSLCertVerificationError):
                verdict = (
                    f"not valid for {server_name!r} (CA file {ca_file})"
                    if exc.verify_code == X509_V_ERR_HOSTNAME_MISMATCH
                    else f"(as {server_name!r}) not trusted by CA file {ca_file}"
                )
                raise TransportError(
                    f"TLS: certificate of {target.authority} {verdict}: "
                    f"{exc.verify_message or _reason(exc)}",
                    retryable=False,
                ) from exc
            if isinstance(exc, ssl.SSLError):
                raise TransportError(
                    f"TLS handshake with {target.authority} failed: {_reason(exc)}"
                ) from exc
            raise
        return conn

    return connect


def _reason(exc: BaseException) -> str:
    """One line for an ssl or socket error: OpenSSL's reason, the errno text, or str()."""
    text = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split()) or type(exc).__name__
