"""The stack a client reaches the server through: HTTP version, TLS, and multiplexing.

A `Stack` is a small frozen value (it crosses into the fleet's worker processes) that builds
the two things a `Client` is injected with: the `Connector` (TCP, or TLS over TCP with the
lab's CA and the ALPN protocol the HTTP version needs) and the HTTP layer factory (`HTTP11`,
`HTTP2` or `HTTP3`). `multiplex` > 1 says how many clients share one HTTP/2 or HTTP/3
connection, as a browser's tab shares one connection per origin; `run_fleet` makes one
`H2Session` (or `H3Session`) for every `multiplex` consecutive clients.

    Stack()                               HTTP/1.1 in clear text (every measurement before TLS)
    Stack(tls=True, ca_file=CA)           HTTP/1.1 over TLS, one connection per stream
    Stack(http="2", tls=True, ca_file=CA) HTTP/2 over TLS, one connection per stream
    ... multiplex=N                       N streams on one HTTP/2 connection
    Stack(http="3", tls=True, ca_file=CA) HTTP/3 over QUIC (UDP), one connection per stream
    ... multiplex=N, cc="cubic"           N streams on one QUIC connection, CUBIC

HTTP/2 is only spoken over TLS here (ALPN "h2"): browsers never speak cleartext HTTP/2, and
neither front (nginx, Caddy) is configured for it. A WebSocket under an HTTP/2 stack opens its
own TLS connection with ALPN "http/1.1", because no front here offers RFC 8441 (WebSocket
over HTTP/2): that is what Chromium does against them too.

HTTP/3 (`http="3"`) runs over QUIC, which is always TLS 1.3 (RFC 9001), so it needs
`tls=True` and `ca_file` as HTTP/2 does; `cc` picks aioquic's congestion controller ("reno",
its default, or "cubic"; TCP's is the kernel's, so `cc` is for HTTP/3 only). The client
sends `server_name` as SNI (Caddy's QUIC listener refuses an empty one). A WebSocket under
HTTP/3 opens its own TCP connection with TLS and ALPN "http/1.1": RFC 9220 (WebSocket over
HTTP/3) is not offered by Caddy 2.6 either.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

from clients.http import HTTP11, HTTPLayerFactory
from clients.net import Connector, tcp_connector

if TYPE_CHECKING:
    from clients.quic import QuicSettings

HTTP_VERSIONS = ("1.1", "2", "3")
MULTIPLEXED = ("2", "3")  # the versions that carry many streams on one connection


@dataclasses.dataclass(frozen=True)
class Stack:
    http: str = "1.1"  # "1.1", "2" or "3"
    tls: bool = False
    ca_file: str = ""  # the CA the client trusts (the lab CA's ca.pem); required with tls
    server_name: str = "localhost"  # SNI and the name the certificate is checked against
    multiplex: int = 1  # HTTP/2 or HTTP/3: consecutive clients sharing one connection
    resume_tls: bool = True  # offer the previous session on a reconnect (TLS resumption)
    cc: str = "reno"  # HTTP/3: QUIC's congestion controller, "reno" or "cubic" (aioquic's)

    def __post_init__(self) -> None:
        if self.http not in HTTP_VERSIONS:
            raise ValueError(f"http must be one of {HTTP_VERSIONS}, got {self.http!r}")
        if self.http == "2" and not self.tls:
            raise ValueError("HTTP/2 is measured over TLS only (as browsers speak it)")
        if self.http == "3" and not self.tls:
            raise ValueError("HTTP/3 runs over QUIC, which is always TLS 1.3: set tls=True")
        if self.tls and not self.ca_file:
            raise ValueError("a TLS stack needs ca_file: the CA certificate to trust")
        if self.multiplex < 1 or (self.multiplex > 1 and self.http not in MULTIPLEXED):
            raise ValueError(
                "multiplex > 1 needs HTTP/2 or HTTP/3 (HTTP/1.1 carries one stream at once)"
            )
        if self.cc != "reno":  # the default needs no import of aioquic
            from clients.quic import CONGESTION_CONTROLLERS

            if self.cc not in CONGESTION_CONTROLLERS:
                raise ValueError(f"cc must be one of {CONGESTION_CONTROLLERS}, got {self.cc!r}")

    @property
    def label(self) -> str:
        """"HTTP/1.1", "HTTP/1.1+TLS", "HTTP/2+TLS", "HTTP/2+TLS x8" (eight streams shared),
        "HTTP/3", "HTTP/3 x8" (QUIC is always TLS: no "+TLS"), "HTTP/3 cubic" (not reno)."""
        if self.http == "3":
            text = "HTTP/3" + (f" {self.cc}" if self.cc != "reno" else "")
            return text + (f" x{self.multiplex}" if self.multiplex > 1 else "")
        text = f"HTTP/{self.http}" + ("+TLS" if self.tls else "")
        return text + (f" x{self.multiplex}" if self.multiplex > 1 else "")

    def connector(self, alpn: str = "") -> Connector:
        """TCP, or TLS offering `alpn` (default: the stack's HTTP version's protocol; under
        HTTP/3, whose requests ride QUIC, the TCP side is a WebSocket's: http/1.1)."""
        if not self.tls:
            return tcp_connector
        from clients.tls import SessionCache, tls_connector

        protocol = alpn or ("h2" if self.http == "2" else "http/1.1")
        cache: SessionCache | None = {} if self.resume_tls else None
        return tls_connector(self.ca_file, self.server_name, (protocol,), session_cache=cache)

    def http_factory(self) -> HTTPLayerFactory:
        """The HTTP layer for one client on its own connection(s)."""
        if self.http == "1.1":
            return HTTP11
        if self.http == "3":
            from clients.h3 import HTTP3

            quic = functools.partial(HTTP3, settings=self.quic_settings())
            return quic  # its WebSocket goes through the client's connector: TLS http/1.1
        from clients.h2 import HTTP2

        raw = self.connector("http/1.1")  # a WebSocket's own connection (module docstring)
        factory: HTTPLayerFactory = functools.partial(HTTP2, raw_connector=raw)
        return factory

    def quic_settings(self) -> QuicSettings:
        """How an HTTP/3 stack speaks QUIC: the lab CA, SNI `server_name`, `cc`."""
        from clients.quic import QuicSettings

        return QuicSettings(server_name=self.server_name, ca_file=self.ca_file, cc=self.cc)
