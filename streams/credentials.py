"""Credentials: who is asking, proved by a signed, expiring token (sans-I/O, stdlib only).

Theory of operation
-------------------
Every credential the server accepts is one text format, signed with the server's key:

    pl1.<kind>.<identity>.<expires>.<nonce>.<mac>

    kind      key      a bearer token for API clients (`Authorization: Bearer ...`), minted
                       by the operator with `pushlab token` and handed to a client
              session  what a browser holds as an HttpOnly cookie, exchanged for a key at
                       `POST /auth/session` (EventSource cannot set a header; a cookie it sends)
              ticket   a single-use WebSocket ticket (`/ws?ticket=...`), from `POST
                       /auth/ticket`, living seconds: for clients that can neither set a
                       header on the upgrade nor rely on a cookie
    identity  who: 1-64 of [A-Za-z0-9._@-]; a stream belongs to the identity that created it
    expires   Unix time in whole seconds after which the credential is refused
    nonce     16 random hex digits: two credentials minted in one second differ, and a
              ticket is remembered by it once redeemed
    mac       HMAC-SHA256 (RFC 2104) under the server's key over everything before it,
              base64url without padding (43 characters)

Why not a JWT: one algorithm and one shape leave nothing to negotiate (no `alg` header to
confuse, RFC 8725 section 2.1), the check is a few lines of stdlib, and the token stays short
enough for a cookie and a URL. Why signed rather than a table of keys: every node of a
cluster checks a credential with the key alone, without a shared store, and `pushlab token`
mints one offline. The cost is revocation: a key credential lives until it expires (mint
them short, or rotate the server's key, which revokes all at once). What is never done: a
credential is never logged or echoed in an error message, and the MAC is compared in
constant time (`hmac.compare_digest`).

A ticket is single use: `Authority.redeem` remembers its nonce until it expires (a set
bounded by the tickets minted within one ticket lifetime, pruned as they expire). With
several server processes each remembers its own redemptions, so a stolen ticket could be
replayed once per process within its 30 s; docs/SECURITY.md says so.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable

from streams.errors import AuthenticationError

VERSION = "pl1"
KINDS = ("key", "session", "ticket")
KEY_TTL_S = 30 * 86_400  # `pushlab token` default: 30 days
SESSION_TTL_S = 12 * 3_600  # a browser session: a working day
TICKET_TTL_S = 30  # long enough to open a WebSocket, short enough to be useless in a log
MIN_SECRET_BYTES = 32  # the HMAC-SHA256 block's half: RFC 2104 section 3 asks for >= L = 32
MAX_EXPIRES_S = 10**12 - 1  # the most the 12-digit `expires` field holds (year 33658)
MAX_REMEMBERED_TICKETS = 100_000  # redeemed tickets remembered at once; beyond: refuse minting

_IDENTITY = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_TOKEN = re.compile(
    r"pl1\.(key|session|ticket)\.([A-Za-z0-9._@-]{1,64})\.([0-9]{1,12})\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """What a valid credential proves."""

    identity: str
    kind: str
    expires_s: int
    nonce: str


def check_identity(identity: str) -> str:
    if not _IDENTITY.fullmatch(identity):
        raise ValueError(f"an identity is 1-64 of A-Z a-z 0-9 . _ @ -, got {identity!r}")
    return identity


def new_secret() -> bytes:
    """A fresh server key, as the hex text a key file holds (64 characters: 32 bytes)."""
    return secrets.token_hex(32).encode()


def load_secret(data: bytes) -> bytes:
    """A key file's content as the key: surrounding whitespace removed, at least 32 bytes."""
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the key must hold at least {MIN_SECRET_BYTES} bytes, not {len(secret)}")
    return secret


class Authority:
    """Mints and checks credentials under one key; `clock` returns Unix seconds."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = load_secret(secret)
        self._clock = clock
        self._redeemed: dict[str, int] = {}  # ticket nonce -> its expiry

    def now(self) -> float:
        """The clock credentials are minted and checked by (Unix seconds)."""
        return self._clock()

    def _mac(self, text: str) -> str:
        digest = hmac.new(self._secret, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def mint(self, identity: str, kind: str = "key", ttl_s: float | None = None) -> str:
        """A credential for `identity`, valid `ttl_s` seconds (default: the kind's)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        check_identity(identity)
        if ttl_s is None:
            ttl_s = {"key": KEY_TTL_S, "session": SESSION_TTL_S, "ticket": TICKET_TTL_S}[kind]
        # `pushlab token --ttl-s` takes any float: NaN and infinities were a traceback, 0 and
        # less a credential refused on arrival, 1e20 one the format cannot hold (never valid)
        if not 1 <= ttl_s <= MAX_EXPIRES_S - self._clock():
            raise ValueError(f"ttl_s must be at least 1 and fit the 12-digit expiry, not {ttl_s}")
        expires = int(self._clock() + ttl_s)
        body = f"{VERSION}.{kind}.{identity}.{expires}.{secrets.token_hex(8)}"
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str, kinds: tuple[str, ...] = ("key",)) -> Claim:
        """The claim `token` proves, if it is well formed, signed with this key, one of
        `kinds` and not expired; AuthenticationError saying which of these failed."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise AuthenticationError("malformed credential")
        kind, identity, expires, nonce, mac = match.groups()
        body = token[: match.start(5) - 1]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise AuthenticationError("credential not signed by this server")
        if kind not in kinds:
            raise AuthenticationError(f"a {kind} credential is not accepted here")
        if int(expires) <= self._clock():
            raise AuthenticationError("credential expired")
        return Claim(identity, kind, int(expires), nonce)

    def redeem(self, ticket: str) -> Claim:
        """Verify a WebSocket ticket and use it up: a second redemption is refused."""
        claim = self.verify(ticket, ("ticket",))
        self._prune()
        if claim.nonce in self._redeemed:
            raise AuthenticationError("ticket already used")
        self._redeemed[claim.nonce] = claim.expires_s
        return claim

    def room_for_tickets(self) -> bool:
        """Whether a new ticket can still be remembered once redeemed (bounded memory)."""
        self._prune()
        return len(self._redeemed) < MAX_REMEMBERED_TICKETS

    def _prune(self) -> None:
        """Forget redeemed tickets past their expiry. Every ticket lives TICKET_TTL_S, so
        redemption order is nearly expiry order: popping from the oldest end stops at the
        first live one (an expired one behind it waits at most one ticket lifetime)."""
        now, redeemed = self._clock(), self._redeemed
        while redeemed:
            oldest = next(iter(redeemed))
            if redeemed[oldest] > now:
                break
            del redeemed[oldest]

    def statistics(self) -> dict[str, int]:
        return {"tickets_remembered": len(self._redeemed)}
