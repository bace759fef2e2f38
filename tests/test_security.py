"""The security acceptance suite (issue 14, docs/SECURITY.md), over the wire.

One `--auth` server child for the module (`authed`: the lab's own harness, minting with the
key its ready line names), and in-process servers (`serve`) for the settings one test needs
(--auth-query, --allowed-origins, --lab-debug, small quotas). What is checked:

1. every transport's requests refused without a valid credential (401 + WWW-Authenticate)
   and on someone else's stream (403), each refusal a JSON error holding none of the
   stream's token texts;
2. every form of credential accepted where it belongs, and only there;
3. the Python clients and the official `openai` SDK complete a stream with a credential;
4. the browser surface: Host, Origin, CORS, another site's no-cors GET (Sec-Fetch-Site, also
   in Chromium), JSON-only bodies, /debug/cut;
5. the startup rules (one-line errors, exit 2);
6. one client cannot make the server refuse another (quotas by identity and by address).

The transports come from the registry; `creates`/`reads` say how each one's requests look
and must name every registered key (a new transport fails here until it is added).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from multidict import CIMultiDictProxy

import server
from clients.base import ClientOptions
from clients.browser import CHROMIUM, CHROMIUM_ARGS
from clients.fleet import FleetSpec, run_fleet
from experiments import cli
from harness.children import ServerProcess
from streams.credentials import Authority, new_secret
from streams.generator import texts
from streams.params import GenParams
from tests.support import UNIT, Served, ServeFactory, wait_until
from transports import registry
from transports.web import guard

# alice's stream: its token texts must never appear in a refused response. Chinese text, so
# an ASCII error message cannot hold one by chance.
ALICE = GenParams(tokens=8, rate=1000.0, ttft_ms=0.0, seed=11, text="zh")
SECRET_TEXTS = [t for t in texts(ALICE) if not t.isascii()]
QUICK = GenParams(tokens=3, rate=1000.0, ttft_ms=0.0, seed=5)
RUNNING = GenParams(tokens=1000, rate=0.5, ttft_ms=0.0, seed=1)  # runs for the whole test
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
}
REALM = 'Bearer realm="pushlab"'
TIMEOUT = aiohttp.ClientTimeout(total=10 * UNIT)


@dataclasses.dataclass(frozen=True)
class Call:
    """One request of a transport: method, path, query, JSON body, headers."""

    method: str
    path: str
    params: dict[str, str] | None = None
    json: dict[str, Any] | None = None
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.params or ''}{self.json or ''}{self.headers or ''}"


def _chat(params: GenParams, stream: bool) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **params.as_dict(),
    }


def creates(key: str, params: GenParams = QUICK) -> list[Call]:
    """The requests that start a stream on transport `key`."""
    query, body = params.as_query(), params.as_dict()
    table = {
        "sse": [Call("GET", "/sse", params=query), Call("POST", "/sse", json=body)],
        "websocket": [Call("GET", "/ws", headers=UPGRADE)],
        "longpoll": [Call("POST", "/longpoll", json=body)],
        "shortpoll": [Call("POST", "/shortpoll", json=body)],
        "ndjson": [Call("GET", "/ndjson", params=query), Call("POST", "/ndjson", json=body)],
        "oneshot": [Call("GET", "/oneshot", params=query), Call("POST", "/oneshot", json=body)],
        "openai": [
            Call("POST", "/v1/chat/completions", json=_chat(params, True)),
            Call("POST", "/v1/chat/completions", json=_chat(params, False)),
        ],
        # a QUIC session, no HTTP/1.1 request: its refusals are in tests/test_webtransport.py
        "webtransport": [],
    }
    assert set(table) == set(registry.KEYS), "name the new transport's requests here"
    return table[key]


def reads(key: str, sid: str) -> list[Call]:
    """The HTTP requests that read (resume, poll) stream `sid` on transport `key` (a
    WebSocket resumes by a message: `test_websocket_someone_elses_stream`)."""
    at = {"stream": sid, "after": "0"}
    table = {
        "sse": [
            Call("GET", "/sse", params=at),
            Call("POST", "/sse", json={"stream": sid, "after": 0}),
            Call("GET", "/sse", headers={"Last-Event-ID": f"{sid}:0"}),
            Call("POST", "/sse", headers={"Last-Event-ID": f"{sid}:2"}),
        ],
        "websocket": [],
        "longpoll": [Call("GET", f"/longpoll/{sid}", params={"after": "0", "wait": "0"})],
        "shortpoll": [Call("GET", f"/shortpoll/{sid}", params={"after": "0"})],
        "ndjson": [
            Call("GET", "/ndjson", params=at),
            Call("POST", "/ndjson", json={"stream": sid}),
        ],
        "oneshot": [Call("GET", "/oneshot", params=at)],
        "openai": [],  # no event ids: nothing names a stream to read
        "webtransport": [],  # a resume message in a QUIC session (tests/test_webtransport.py)
    }
    assert set(table) == set(registry.KEYS), "name the new transport's requests here"
    upgraded_or_not_resumable = (
        not registry.get(key).resumable or registry.get(key).connection != "http"
    )
    assert bool(table[key]) != upgraded_or_not_resumable
    return table[key]


def controls(sid: str) -> list[Call]:
    """The routes every transport shares: describe and cancel a stream, and the counters."""
    return [
        Call("GET", f"/streams/{sid}"),
        Call("DELETE", f"/streams/{sid}"),
        Call("GET", "/stats"),
    ]


async def send(
    session: aiohttp.ClientSession, base: str, call: Call, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """(status, headers, whole body) of `call`, with `headers` added to its own."""
    merged = {**(call.headers or {}), **(headers or {})}
    async with session.request(
        call.method,
        base + call.path,
        params=call.params,
        json=call.json,
        headers=merged,
        timeout=TIMEOUT,
    ) as resp:
        return resp.status, resp.headers, await resp.read()


def assert_no_tokens(body: bytes, what: object) -> None:
    for text in SECRET_TEXTS:
        escaped = json.dumps(text)[1:-1].encode()  # as json.dumps' ASCII escapes (/v1)
        assert text.encode() not in body and escaped not in body, f"{what} leaked {text!r}"


def assert_refused(
    status: int, headers: CIMultiDictProxy[str], body: bytes, expected: int, what: object
) -> dict[str, Any]:
    """A 401 (with its challenge) or 403 JSON error holding no token of alice's stream."""
    assert status == expected, f"{what}: {status} {body[:200]!r}"
    error = json.loads(body)["error"]
    kind = {401: "authentication_error", 403: "permission_error"}[expected]
    assert error["type"] == kind, what
    assert ("WWW-Authenticate" in headers) == (expected == 401), what
    if expected == 401:
        assert headers["WWW-Authenticate"] == REALM
    assert_no_tokens(body, what)
    return error


def mint(server_: ServerProcess, identity: str, kind: str = "key", expired: bool = False) -> str:
    """A credential with the server's key; `expired`: minted a minute ago, valid 30 s."""
    clock = (lambda: time.time() - 60) if expired else time.time
    secret = Path(server_.secret_file()).read_bytes()
    return Authority(secret, clock).mint(identity, kind, 30 if expired else None)


def bad_credentials(server_: ServerProcess) -> dict[str, dict[str, str]]:
    """Headers of each way a request lacks a valid credential of this server."""
    return {
        "none": {},
        "garbage": {"Authorization": "Bearer not-a-credential"},
        "another key's": {"Authorization": f"Bearer {Authority(new_secret()).mint('alice')}"},
        "expired": {"Authorization": f"Bearer {mint(server_, 'alice', expired=True)}"},
        "expired cookie": {
            "Cookie": f"{guard.SESSION_COOKIE}={mint(server_, 'alice', 'session', True)}"
        },
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _http(method: str, url: str, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={**bearer(token), "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10 * UNIT) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def authed() -> Iterator[ServerProcess]:
    proc = ServerProcess(["--auth"])
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def alice_stream(authed: ServerProcess) -> str:
    """A finished stream of alice's, every token of it still held."""
    token = mint(authed, "alice")
    sid = str(_http("POST", f"{authed.url}/longpoll", token, ALICE.as_dict())["stream"])

    def finished() -> dict[str, Any]:  # {} (falsy) while it runs
        state = _http("GET", f"{authed.url}/streams/{sid}", token)
        return state if state["state"] != "running" else {}

    state = wait_until(finished, what="alice's stream finished")
    assert state["tokens_emitted"] == ALICE.tokens and len(SECRET_TEXTS) >= ALICE.tokens // 2
    return sid


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# -- 1. refusals ------------------------------------------------------------------------------


# HTTP requests and WebSocket handshakes; a QUIC session's refusals (no credential, someone
# else's stream) are tests/test_webtransport.py's, over its own endpoint
OVER_TCP = registry.keys_where(lambda t: t.connection != "session")


@pytest.mark.parametrize("key", OVER_TCP)
async def test_no_valid_credential_is_refused_before_anything(
    authed: ServerProcess, alice_stream: str, session: aiohttp.ClientSession, key: str
) -> None:
    for case, headers in bad_credentials(authed).items():
        for call in [*creates(key), *reads(key, alice_stream)]:
            status, resp_headers, body = await send(session, authed.url, call, headers)
            what = f"{case}: {call}"
            error = assert_refused(status, resp_headers, body, 401, what)
            assert ("expired" in error["message"]) == case.startswith("expired"), what
            for value in headers.values():  # the credential is never echoed
                assert value.split(" ", 1)[-1].split("=", 1)[-1].encode() not in body, what


async def test_control_routes_refuse_without_valid_credential_and_to_others(
    authed: ServerProcess, alice_stream: str, session: aiohttp.ClientSession
) -> None:
    for case, headers in bad_credentials(authed).items():
        for call in controls(alice_stream):
            assert_refused(*await send(session, authed.url, call, headers), 401, f"{case}: {call}")
    alice, bob = bearer(mint(authed, "alice")), bearer(mint(authed, "bob"))
    status, _, body = await send(session, authed.url, creates("longpoll", RUNNING)[0], alice)
    assert status == 201
    running = json.loads(body)["stream"]
    for sid in (alice_stream, running):
        for call in controls(sid)[:2]:
            error = assert_refused(*await send(session, authed.url, call, bob), 403, call)
            assert error["param"] == "stream" and "alice" not in error["message"]
    status, _, body = await send(session, authed.url, controls(running)[0], alice)
    assert status == 200 and json.loads(body)["state"] == "running"  # bob's cancel did nothing
    status, _, body = await send(session, authed.url, controls(running)[1], alice)
    assert status == 200 and json.loads(body)["reason"] == "cancelled"
    status, _, body = await send(session, authed.url, controls("")[2], bob)
    assert status == 200 and "hub" in json.loads(body)  # /stats: any identity


@pytest.mark.parametrize("key", registry.keys_where(lambda t: t.connection == "http"))
async def test_someone_elses_stream_is_refused(
    authed: ServerProcess, alice_stream: str, session: aiohttp.ClientSession, key: str
) -> None:
    bob = bearer(mint(authed, "bob"))
    for call in reads(key, alice_stream):
        error = assert_refused(*await send(session, authed.url, call, bob), 403, call)
        assert "alice" not in error["message"]


@pytest.mark.parametrize("key", registry.keys_where(lambda t: t.connection == "upgraded"))
async def test_websocket_someone_elses_stream(
    authed: ServerProcess, alice_stream: str, session: aiohttp.ClientSession, key: str
) -> None:
    """A resume of alice's stream by bob: an error message, close 1008, no token frame; a
    cancel message reaches only a stream of bob's own connection."""
    bob = bearer(mint(authed, "bob"))
    for message, kind in [
        ({"type": "resume", "stream": alice_stream, "after": 0}, "permission_error"),
        ({"type": "cancel"}, "invalid_request_error"),
    ]:
        async with session.ws_connect(
            f"{authed.url}/ws", headers=bob, timeout=aiohttp.ClientWSTimeout(ws_close=5 * UNIT)
        ) as ws:
            await ws.send_json(message)
            frames = [msg async for msg in ws]
            assert ws.close_code == 1008
        assert len(frames) == 1, frames
        assert json.loads(frames[0].data)["error"]["type"] == kind
        assert_no_tokens(frames[0].data.encode(), message)
    alice = bearer(mint(authed, "alice"))
    _, _, body = await send(session, authed.url, controls(alice_stream)[0], alice)
    assert json.loads(body)["reason"] == "done"


# -- 2. every form of credential where it belongs ---------------------------------------------


async def read_ws(ws: aiohttp.ClientWebSocketResponse, start: GenParams = QUICK) -> str:
    """Start a stream on `ws` and read it to its end: the text received."""
    await ws.send_json({"type": "start", **start.as_dict()})
    got = []
    async for msg in ws:
        message = json.loads(msg.data)
        assert message["type"] in ("started", "token", "done"), message
        if message["type"] == "token":
            got.append(message["text"])
        if message["type"] == "done":
            break
    return "".join(got)


@pytest.mark.parametrize("key", OVER_TCP)  # a session's Bearer: test_python_clients_complete...
async def test_bearer_header_works_on_every_transport(
    authed: ServerProcess, session: aiohttp.ClientSession, key: str
) -> None:
    alice = bearer(mint(authed, "alice"))
    if registry.get(key).connection == "upgraded":
        async with session.ws_connect(f"{authed.url}/ws", headers=alice) as ws:
            assert await read_ws(ws) == "".join(texts(QUICK))
        return
    for call in creates(key):
        status, _, body = await send(session, authed.url, call, alice)
        assert status in (200, 201), f"{call}: {status} {body[:200]!r}"


async def test_session_cookie(authed: ServerProcess, session: aiohttp.ClientSession) -> None:
    key = mint(authed, "alice")
    async with session.post(f"{authed.url}/auth/session", headers=bearer(key)) as resp:
        assert resp.status == 200 and (await resp.json())["identity"] == "alice"
        [raw] = resp.headers.getall("Set-Cookie")
        cookie = resp.cookies[guard.SESSION_COOKIE]
    attributes = {part.strip().split("=")[0].lower(): part for part in raw.split(";")[1:]}
    assert "httponly" in attributes and attributes["samesite"].strip() == "SameSite=Strict"
    assert cookie["path"] == "/" and int(cookie["max-age"]) > 0
    jar = {"Cookie": f"{guard.SESSION_COOKIE}={cookie.value}"}
    status, _, body = await send(session, authed.url, creates("sse")[0], jar)
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    origin = {"Origin": authed.url}  # a browser's WebSocket: the page's origin and the cookie
    async with session.ws_connect(f"{authed.url}/ws", headers={**jar, **origin}) as ws:
        assert await read_ws(ws) == "".join(texts(QUICK))
    hijack = Call("GET", "/ws", headers={**UPGRADE, **jar, "Origin": "http://evil.example"})
    error = assert_refused(*await send(session, authed.url, hijack), 403, "a foreign page's /ws")
    assert error["param"] == "Origin"
    # a session is a browser's: it buys no other session (that takes a key)
    status, headers, body = await send(
        session, authed.url, Call("POST", "/auth/session"), bearer(cookie.value)
    )
    assert_refused(status, headers, body, 401, "a session for a session")
    async with session.get(f"{authed.url}/auth/session", headers=jar) as resp:
        assert await resp.json() == {"auth": True, "identity": "alice"}


async def test_ticket_is_single_use_and_expires(
    authed: ServerProcess, session: aiohttp.ClientSession
) -> None:
    status, _, body = await send(
        session, authed.url, Call("POST", "/auth/ticket"), bearer(mint(authed, "alice"))
    )
    assert status == 200
    ticket = json.loads(body)["ticket"]
    async with session.ws_connect(f"{authed.url}/ws", params={"ticket": ticket}) as ws:
        assert await read_ws(ws) == "".join(texts(QUICK))
    upgrade = Call("GET", "/ws", params={"ticket": ticket}, headers=UPGRADE)
    assert_refused(*await send(session, authed.url, upgrade), 401, "the ticket's second use")
    expired = dataclasses.replace(upgrade, params={"ticket": mint(authed, "alice", "ticket", True)})
    assert_refused(*await send(session, authed.url, expired), 401, "an expired ticket")
    fresh = mint(authed, "alice", "ticket")  # a ticket opens /ws and nothing else
    for call in (
        dataclasses.replace(creates("ndjson")[0], params={**QUICK.as_query(), "ticket": fresh}),
        dataclasses.replace(creates("ndjson")[0], headers=bearer(fresh)),
    ):
        assert_refused(*await send(session, authed.url, call), 401, call)


async def test_access_token_query_only_with_auth_query(
    authed: ServerProcess, serve: ServeFactory, session: aiohttp.ClientSession
) -> None:
    refused = dataclasses.replace(
        creates("ndjson")[0], params={**QUICK.as_query(), "access_token": mint(authed, "alice")}
    )
    assert_refused(*await send(session, authed.url, refused), 401, "?access_token= by default")
    served = await serve(auth=True, auth_query=True)
    token = served.app[guard.AUTHORITY].mint("alice")
    create = dataclasses.replace(creates("longpoll")[0], params={"access_token": token})
    status, _, body = await send(session, served.url, create)
    assert status == 201, body
    sid = json.loads(body)["stream"]
    # access_token is taken off the query: these routes refuse any parameter they don't know
    for call in (
        Call("GET", f"/longpoll/{sid}", params={"after": "0", "access_token": token}),
        Call("GET", "/ndjson", params={"stream": sid, "after": "0", "access_token": token}),
    ):
        status, _, body = await send(session, served.url, call)
        assert status == 200, f"{call}: {body[:200]!r}"
    async with session.ws_connect(f"{served.url}/ws", params={"access_token": token}) as ws:
        assert await read_ws(ws) == "".join(texts(QUICK))
    session_token = served.app[guard.AUTHORITY].mint("alice", "session")  # a key, not a cookie's
    call = Call("GET", f"/longpoll/{sid}", params={"after": "0", "access_token": session_token})
    assert_refused(*await send(session, served.url, call), 401, call)


# -- 3. the lab's clients and the openai SDK --------------------------------------------------


@pytest.mark.parametrize("key", registry.KEYS)
async def test_python_clients_complete_with_a_credential(authed: ServerProcess, key: str) -> None:
    params = GenParams(tokens=6, rate=400.0, ttft_ms=0.0, seed=7)
    options = ClientOptions(interval_ms=5.0, wait_s=2.0)
    [rec] = await run_fleet(FleetSpec(key, 1), authed.authed_target("alice"), params, options)
    assert rec.error == "" and rec.text() == "".join(texts(params))
    [rec] = await run_fleet(FleetSpec(key, 1), authed.target, params, options)
    assert "401" in rec.error and rec.text() == ""


def test_openai_sdk_with_and_without_a_credential(authed: ServerProcess) -> None:
    params = GenParams(tokens=6, rate=400.0, ttft_ms=0.0, seed=9)

    def client(api_key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{authed.url}/v1", api_key=api_key, timeout=10 * UNIT, max_retries=0
        )

    chunks = client(mint(authed, "alice")).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body=params.as_dict(),
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "".join(texts(params))
    for api_key in ("not-a-credential", Authority(new_secret()).mint("alice")):
        with pytest.raises(openai.AuthenticationError) as info:
            client(api_key).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        assert info.value.status_code == 401 and api_key not in str(info.value)


# -- 4. the browser surface -------------------------------------------------------------------


async def test_websocket_origin_is_checked_before_the_upgrade(
    serve: ServeFactory, session: aiohttp.ClientSession
) -> None:
    served = await serve(allowed_origins="http://app.example")
    for origin in ("http://evil.example", "null", f"http://127.0.0.2:{served.target.port}"):
        call = Call("GET", "/ws", headers={**UPGRADE, "Origin": origin})
        error = assert_refused(*await send(session, served.url, call), 403, origin)
        assert error["param"] == "Origin"
    for origin in (served.url, "http://app.example"):
        async with session.ws_connect(f"{served.url}/ws", headers={"Origin": origin}) as ws:
            assert await read_ws(ws) == "".join(texts(QUICK))


CORS_RESPONSE = {
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Expose-Headers",
}


async def test_cors_only_for_allowed_origins(
    serve: ServeFactory, session: aiohttp.ClientSession
) -> None:
    served = await serve(allowed_origins="http://app.example")
    preflight = Call(
        "OPTIONS",
        "/sse",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    status, headers, body = await send(session, served.url, preflight)
    assert status == 204 and body == b""
    assert {k: v for k, v in headers.items() if k.startswith("Access-Control-")} == {
        "Access-Control-Allow-Origin": "http://app.example",
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "GET, POST, DELETE",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, Last-Event-ID",
        "Access-Control-Max-Age": "600",
    }
    assert headers.getall("Vary") == ["Origin"]
    sse = creates("sse")[0]
    _, headers, _ = await send(session, served.url, sse, {"Origin": "http://app.example"})
    assert headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Expose-Headers"] == "X-Pushlab-Stream, Retry-After"
    for extra in ({}, {"Origin": served.url}):  # no Origin, or the page's own: no CORS
        status, headers, _ = await send(session, served.url, sse, extra)
        assert status == 200 and not CORS_RESPONSE & set(headers)
    plain = await serve()  # no --allowed-origins: no CORS header ever, a preflight refused
    assert_refused(*await send(session, plain.url, preflight), 403, "preflight by default")
    for extra in ({}, {"Origin": plain.url}):
        status, headers, _ = await send(session, plain.url, sse, extra)
        assert status == 200 and not {h for h in headers if h.startswith("Access-Control-")}


def every_route(app: Any) -> list[Call]:
    """A concrete request for every route the app mounts (HEAD included)."""
    calls = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else "/"
        path = path.replace("{stream}", "x").replace("{name}", "index.html")
        calls.append(Call(route.method, path))
    return calls


async def test_foreign_host_is_refused_on_every_route(
    serve: ServeFactory, session: aiohttp.ClientSession
) -> None:
    served = await serve(lab_debug=True, auth=True)
    calls = every_route(served.app)
    assert {
        "/",
        "/static/index.html",
        "/ws",
        "/v1/chat/completions",
        "/debug/cut",
        "/auth/session",
    } <= {c.path for c in calls}
    token = served.app[guard.AUTHORITY].mint("alice")
    for host in ("evil.example", "evil.example:80", "localhost.evil.example"):
        for call in calls:
            status, _, body = await send(session, served.url, call, {"Host": host, **bearer(token)})
            assert status == 403, f"{host} {call}: {status}"
            if call.method != "HEAD":
                assert json.loads(body)["error"]["param"] == "Host"
    status, headers, _ = await send(session, served.url, Call("GET", "/"), {"Host": "localhost"})
    assert status == 200 and headers["Content-Type"].startswith("text/html")  # the page, open


async def test_another_sites_no_cors_get_starts_nothing(
    serve: ServeFactory, session: aiohttp.ClientSession
) -> None:
    """An `<img src=".../oneshot?...">` on another site's page: a GET without Origin, which
    Fetch Metadata marks as another site's; the page itself stays reachable by a link."""
    served = await serve()
    gets = [c for key in registry.KEYS for c in creates(key) if c.method == "GET"]
    for site in ("cross-site", "same-site"):
        for call in gets:
            status, _, body = await send(session, served.url, call, {"Sec-Fetch-Site": site})
            assert status == 403 and json.loads(body)["error"]["param"] == "Sec-Fetch-Site", call
    assert served.app[server.HUB].statistics().streams_created == 0
    status, _, _ = await send(
        session, served.url, Call("GET", "/"), {"Sec-Fetch-Site": "cross-site"}
    )
    assert status == 200
    for site in ("same-origin", "none"):  # the page's own request; a typed URL
        status, _, _ = await send(
            session, served.url, creates("oneshot")[0], {"Sec-Fetch-Site": site}
        )
        assert status == 200


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
async def test_another_sites_img_in_chromium(serve: ServeFactory) -> None:
    """Chromium itself: an `<img>` on a page of another site (localhost against 127.0.0.1)
    is sent without Origin (measured: `Sec-Fetch-Site: cross-site`, no Origin; before the
    guard read Sec-Fetch-Site it started a stream) and starts nothing; the same `<img>` on
    the server's own page starts its stream."""
    from playwright.async_api import async_playwright

    served = await serve()
    query = "&".join(f"{k}={v}" for k, v in GenParams(tokens=1, ttft_ms=0.0).as_query().items())
    script = """src => new Promise(done => {
        const img = new Image(); img.onload = img.onerror = () => done(true); img.src = src; })"""
    created = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        try:
            page = await browser.new_page()
            for page_url in (f"http://localhost:{served.target.port}/", f"{served.url}/"):
                await page.goto(page_url, timeout=10_000 * UNIT)
                await page.evaluate(script, f"{served.url}/oneshot?{query}")
                created.append(served.app[server.HUB].statistics().streams_created)
        finally:
            await browser.close()
    assert created == [0, 1]


async def test_post_bodies_must_be_json(
    serve: ServeFactory, session: aiohttp.ClientSession
) -> None:
    served = await serve()
    for key in registry.KEYS:
        for call in creates(key):
            if call.method != "POST":
                continue
            async with session.post(
                served.url + call.path,
                data=json.dumps(call.json),
                headers={"Content-Type": "text/plain"},
            ) as resp:
                body = await resp.json()
                assert resp.status == 415, f"{call}: {body}"
                assert body["error"]["type"] == "unsupported_media_type_error"


async def test_debug_cut_needs_lab_debug_and_the_pages_origin(
    serve: ServeFactory, session: aiohttp.ClientSession
) -> None:
    cut = Call("POST", "/debug/cut")
    plain = await serve()
    status, _, _ = await send(session, plain.url, cut, {"Origin": plain.url})
    assert status == 404
    served = await serve(lab_debug=True)
    assert_refused(*await send(session, served.url, cut), 403, "no Origin")
    assert_refused(
        *await send(session, served.url, cut, {"Origin": "http://evil.example"}),
        403,
        "a foreign Origin",
    )
    status, _, body = await send(session, served.url, cut, {"Origin": served.url})
    assert status == 200 and json.loads(body)["peer"] == "127.0.0.1"


# -- 5. startup rules -------------------------------------------------------------------------


def exit_code(main: Any, argv: list[str]) -> int:
    try:
        return int(main(argv))
    except SystemExit as exc:
        return int(exc.code or 0)


def one_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.endswith("\n"), err
    for word in words:
        assert word in err
    return err


def test_startup_rules(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert exit_code(server.main, ["--host", "0.0.0.0", "--port", "0"]) == 2
    one_line(capsys, "--auth", "--allow-anonymous")
    short = tmp_path / "short"
    short.write_bytes(b"0123456789abcdef\n")
    assert exit_code(server.main, ["--auth", "--auth-secret-file", str(short)]) == 2
    one_line(capsys, "--auth-secret-file", "32 bytes")
    assert exit_code(server.main, ["--auth-secret-file", str(short)]) == 2
    one_line(capsys, "--auth-secret-file needs --auth")
    key = tmp_path / "key"
    key.write_bytes(new_secret())
    for argv, words in [
        (
            ["--secret-file", str(tmp_path / "missing"), "--identity", "alice"],
            [str(tmp_path / "missing")],
        ),
        (["--secret-file", str(short), "--identity", "alice"], ["32 bytes"]),
        (["--secret-file", str(key), "--identity", "a b"], ["identity"]),
        (["--secret-file", str(key), "--identity", "alice", "--kind", "ticket"], ["--kind"]),
        (["--secret-file", str(key), "--identity", "alice", "--ttl-s", "nan"], ["ttl_s"]),
        (["--secret-file", str(key), "--identity", "alice", "--ttl-s", "0"], ["ttl_s"]),
        (["--secret-file", str(key), "--identity", "alice", "--ttl-s", "1e20"], ["ttl_s"]),
        (["--identity", "alice"], ["--secret-file"]),
    ]:
        assert exit_code(cli.main, ["token", *argv]) == 2, argv
        one_line(capsys, "pushlab token: error:", *words)
    assert exit_code(cli.main, ["token", "--secret-file", str(key), "--identity", "alice"]) == 0
    token = capsys.readouterr().out.strip()
    assert Authority(key.read_bytes()).verify(token).identity == "alice"


@pytest.mark.parametrize("flag", ["--allow-anonymous", "--auth"])
def test_any_address_starts_with_allow_anonymous_or_auth(flag: str) -> None:
    proc = ServerProcess([flag], host="0.0.0.0")
    proc.start()  # listening: its ready line came
    try:
        assert proc.target.port > 0 and ("secret" in proc.ready_fields) == (flag == "--auth")
    finally:
        proc.stop()


# -- 6. one client cannot make the server refuse another --------------------------------------

MAX_STREAMS = 4  # client_share 0.5: a client runs at most 2


async def _clients(
    served: Served, auth: bool
) -> list[tuple[aiohttp.ClientSession, dict[str, str]]]:
    """Two clients of `served`: two identities with --auth, else two source addresses."""
    if auth:
        authority = served.app[guard.AUTHORITY]
        return [(aiohttp.ClientSession(), bearer(authority.mint(who))) for who in ("alice", "bob")]
    return [
        (aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(addr, 0))), {})
        for addr in ("127.0.0.2", "127.0.0.3")
    ]


@pytest.mark.parametrize("auth", [True, False], ids=["identities", "addresses"])
async def test_finished_streams_do_not_fill_the_server(serve: ServeFactory, auth: bool) -> None:
    served = await serve(auth=auth, max_streams=MAX_STREAMS, client_share=0.5)
    (a, a_headers), (b, b_headers) = await _clients(served, auth)
    async with a, b:
        one = Call(
            "GET", "/oneshot", params=GenParams(tokens=1, rate=1000.0, ttft_ms=0.0).as_query()
        )
        statuses = [(await send(a, served.url, one, a_headers))[0] for _ in range(3 * MAX_STREAMS)]
        assert statuses == [200] * (3 * MAX_STREAMS)
        assert (await send(b, served.url, one, b_headers))[0] == 200


@pytest.mark.parametrize("auth", [True, False], ids=["identities", "addresses"])
async def test_running_streams_are_shared(serve: ServeFactory, auth: bool) -> None:
    served = await serve(auth=auth, max_streams=MAX_STREAMS, client_share=0.5)
    (a, a_headers), (b, b_headers) = await _clients(served, auth)
    start = creates("longpoll", RUNNING)[0]
    async with a, b:
        answers = [await send(a, served.url, start, a_headers) for _ in range(4)]
        assert [status for status, _, _ in answers] == [201, 201, 429, 429]
        _, headers, body = answers[2]
        assert json.loads(body)["error"]["type"] == "rate_limit_error"
        assert int(headers["Retry-After"]) >= 1
        assert [(await send(b, served.url, start, b_headers))[0] for _ in range(2)] == [201, 201]
    stats = served.app[server.HUB].statistics()
    assert (stats.streams_running, stats.clients) == (MAX_STREAMS, 2)
