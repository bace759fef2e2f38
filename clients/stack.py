"""The stack a client reaches the server through: HTTP version, TLS, and multiplexing.

A `Stack` is a small frozen value (it crosses into the fleet's worker processes) that builds
the two things a `Client` is injected with: the `Connector` (TCP, or TLS over TCP with the
lab's CA and the ALPN protocol the HTTP version needs) and the HTTP layer factory (`HTTP11`
or `HTTP2`). `multiplex` > 1 says how many clients share one HTTP/2 connection, as a
browser's tab shares one connection per origin; `run_fleet` makes one `H2Session` for every
`multiplex` consecutive clients.

    Stack()                               HTTP/1.1 in clear text (every measurement before TLS)
    Stack(tls=True, ca_file=CA)           HTTP/1.1 over TLS, one connection per stream
    Stack(http="2", tls=True, ca_file=CA) HTTP/2 over TLS, one connection per stream
    ... multiplex=N                       N streams on one HTTP/2 connection

HTTP/2 is only spoken over TLS here (ALPN "h2"): browsers never speak cleartext HTTP/2, and
neither front (nginx, Caddy) is configured for it. A WebSocket under an HTTP/2 stack opens its
own TLS connection with ALPN "http/1.1", because no front here offers RFC 8441 (WebSocket
over HTTP/2): that is what Chromium does against them too.
"""

from __future__ import annotations

import dataclasses
import functools

from clients.http import HTTP11, HTTPLayerFactory
from clients.net import Connector, tcp_connector

HTTP_VERSIONS = ("1.1", "2")


@dataclasses.dataclass(frozen=True)
class Stack:
    http: str = "1.1"  # "1.1" or "2"
    tls: bool = False
    ca_file: str = ""  # the CA the client trusts (the lab CA's ca.pem); required with tls
    server_name: str = "localhost"  # SNI and the name the certificate is checked against
    multiplex: int = 1  # HTTP/2: consecutive clients sharing one connection
    resume_tls: bool = True  # offer the previous session on a reconnect (TLS resumption)

    def __post_init__(self) -> None:
        if self.http not in HTTP_VERSIONS:
            raise ValueError(f"http must be one of {HTTP_VERSIONS}, got {self.http!r}")
        if self.http == "2" and not self.tls:
            raise ValueError("HTTP/2 is measured over TLS only (as browsers speak it)")
        if self.tls and not self.ca_file:
            raise ValueError("a TLS stack needs ca_file: the CA certificate to trust")
        if self.multiplex < 1 or (self.multiplex > 1 and self.http != "2"):
            raise ValueError("multiplex > 1 needs HTTP/2 (HTTP/1.1 carries one stream at once)")

    @property
    def label(self) -> str:
        """"HTTP/1.1", "HTTP/1.1+TLS", "HTTP/2+TLS", "HTTP/2+TLS x8" (eight streams shared)."""
        text = f"HTTP/{self.http}" + ("+TLS" if self.tls else "")
        return text + (f" x{self.multiplex}" if self.multiplex > 1 else "")

    def connector(self, alpn: str = "") -> Connector:
        """TCP, or TLS offering `alpn` (default: the stack's HTTP version's protocol)."""
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
        from clients.h2 import HTTP2

        raw = self.connector("http/1.1")  # a WebSocket's own connection (module docstring)
        factory: HTTPLayerFactory = functools.partial(HTTP2, raw_connector=raw)
        return factory
