"""streams/credentials.py and the guard's pure checks (transports/web/guard.py): sans-I/O,
with a fake clock."""

from __future__ import annotations

import re

import pytest

from streams import credentials
from streams.credentials import Authority, load_secret
from streams.errors import AuthenticationError
from transports.web.config import ServerConfig
from transports.web.guard import Allowed, same_origin

KEY = b"k" * 32


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_round_trip_and_shape() -> None:
    clock = Clock()
    authority = Authority(KEY, clock)
    token = authority.mint("alice@lab", "key", ttl_s=60)
    assert re.fullmatch(r"pl1\.key\.alice@lab\.1800000060\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}", token)
    claim = authority.verify(token)
    assert (claim.identity, claim.kind, claim.expires_s) == ("alice@lab", "key", 1_800_000_060)
    assert authority.mint("alice@lab", ttl_s=60) != token  # the nonce differs


@pytest.mark.parametrize("field", range(6))
def test_any_changed_field_is_refused(field: int) -> None:
    authority = Authority(KEY, Clock())
    parts = authority.mint("alice", "key", ttl_s=60).split(".")
    changed = {0: "pl2", 1: "session", 2: "bob", 3: str(int(parts[3]) + 1000),
               4: "0" * 16, 5: ("A" if parts[5][0] != "A" else "B") + parts[5][1:]}  # fmt: skip
    parts[field] = changed[field]
    with pytest.raises(AuthenticationError):
        authority.verify(".".join(parts), ("key", "session"))


def test_other_key_expired_wrong_kind_and_malformed() -> None:
    clock = Clock()
    authority = Authority(KEY, clock)
    other = Authority(b"o" * 32, clock)
    with pytest.raises(AuthenticationError, match="not signed by this server"):
        authority.verify(other.mint("alice"))
    session = authority.mint("alice", "session", ttl_s=10)
    with pytest.raises(AuthenticationError, match="session credential is not accepted"):
        authority.verify(session, ("key",))
    assert authority.verify(session, ("session",)).identity == "alice"
    clock.now += 10  # expires at exactly now + ttl: refused from that second on
    with pytest.raises(AuthenticationError, match="expired"):
        authority.verify(session, ("session",))
    for bad in ["", "Bearer x", "pl1.key.alice", "pl1.key.a b.1.0123456789abcdef." + "A" * 43,
                "pl1.key.alice.1800000060.0123456789abcdef." + "A" * 42, "\xff" * 90]:  # fmt: skip
        with pytest.raises(AuthenticationError, match="malformed"):
            authority.verify(bad)


def test_error_messages_never_echo_the_credential() -> None:
    authority = Authority(KEY, Clock())
    token = authority.mint("alice", ttl_s=60)
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (tampered, token + "x", Authority(b"o" * 32, Clock()).mint("alice")):
        with pytest.raises(AuthenticationError) as info:
            authority.verify(bad)
        assert bad[-43:] not in info.value.message and "alice" not in info.value.message


def test_ticket_is_single_use_and_forgotten_after_expiry() -> None:
    clock = Clock()
    authority = Authority(KEY, clock)
    ticket = authority.mint("alice", "ticket")
    assert authority.redeem(ticket).identity == "alice"
    with pytest.raises(AuthenticationError, match="already used"):
        authority.redeem(ticket)
    with pytest.raises(AuthenticationError, match="not accepted"):
        authority.redeem(authority.mint("alice", "key"))  # a key is not a ticket
    assert authority.statistics() == {"tickets_remembered": 1}
    clock.now += credentials.TICKET_TTL_S
    authority.redeem(authority.mint("bob", "ticket"))  # redeeming prunes the expired one
    assert authority.statistics() == {"tickets_remembered": 1}


def test_secret_and_identity_rules() -> None:
    assert load_secret(b"  " + b"s" * 32 + b"\n") == b"s" * 32
    with pytest.raises(ValueError, match="at least 32"):
        load_secret(b"short\n")
    assert len(load_secret(credentials.new_secret())) == 64
    authority = Authority(KEY, Clock())
    for bad in ("", "a" * 65, "a b", "a.b/c", "é"):
        with pytest.raises(ValueError, match="identity"):
            authority.mint(bad)
    with pytest.raises(ValueError, match="kind"):
        authority.mint("alice", "root")


# -- the guard's Host and Origin rules ------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "served"),
    [
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("LOCALHOST.", True),
        ("[::1]:8000", True),
        ("192.0.2.7:8000", True),  # an IP literal (RFC 5737 documentation range): no name
        ("[2001:db8::1]", True),
        ("evil.example:8000", False),  # a rebinding page's own name
        ("localhost.evil.example", False),
        ("", False),
        ("pushlab.example", False),
    ],
)
def test_host_allow_list_defaults(host: str, served: bool) -> None:
    assert Allowed(ServerConfig()).host(host) is served


def test_host_allow_list_configured() -> None:
    allowed = Allowed(ServerConfig(allowed_hosts="pushlab.example, api.pushlab.example"))
    assert allowed.host("pushlab.example:443") and allowed.host("API.pushlab.example")
    assert not allowed.host("evil.example")
    assert Allowed(ServerConfig(allowed_hosts="*")).host("anything.example")


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("https://localhost:8443", "localhost:8443", True),  # TLS at a front, plain behind
        ("http://127.0.0.1:8001", "127.0.0.1:8000", False),  # another port is another origin
        ("http://evil.example", "127.0.0.1:8000", False),
        ("null", "127.0.0.1:8000", False),
        ("file://", "", False),
        ("ws://127.0.0.1:8000", "127.0.0.1:8000", False),
    ],
)
def test_same_origin(origin: str, host: str, same: bool) -> None:
    assert same_origin(origin, host) is same


def test_host_decisions_are_remembered_within_a_bound() -> None:
    from transports.web.guard import MAX_DECIDED_HOSTS

    allowed = Allowed(ServerConfig())
    names = [f"h{i}.example" for i in range(MAX_DECIDED_HOSTS + 500)]
    assert not any(allowed.host(name) for name in names)  # refused, remembered or not
    assert len(allowed.decided) == MAX_DECIDED_HOSTS
    assert allowed.host("127.0.0.1:8000") and allowed.host("127.0.0.1:8000")  # past the bound
    assert not allowed.host(names[-1])
