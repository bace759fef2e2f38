"""Which credential each browser API can carry, tried in Chromium (the Python half of
static/authprobe.js, driven by the `auth` experiment).

For every browser API (`PROBES`) and credential form (`CREDENTIALS`), the page tries to
complete one short stream from its own server, and `outcome` names what happened:

    complete             every token and the end marker arrived
    refused (401)        the server answered 401: seen by the page (fetch), or, where the
                         page cannot see a status, by the DevTools protocol (EventSource's
                         response) or in Chromium's console (a WebSocket handshake answered 401
                         is reported as "HTTP Authentication failed; no valid credentials
                         available", and CDP reports no handshake response for it)
    cannot be expressed  the API has no place for it: the call a developer would write threw
                         (`new WebSocket(url, {headers})`: the second argument is the
                         subprotocol list, "[object Object]" is no valid subprotocol)
    failed: ...          anything else, with the page's reason

MEASURED (Debian's Chromium, --auth): `new EventSource(url, {headers})` does not throw; the
request goes out without the header and the server answers 401. Cookies set by
`POST /auth/session` ride along on EventSource, fetch and the WebSocket handshake alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from clients.browser import BrowserSession, CdpLedger
from streams.params import GenParams

# probe name (static/authprobe.js) -> (the registry transport it speaks, how it is shown)
PROBES: dict[str, tuple[str, str]] = {
    "eventsource": ("sse", "EventSource (GET /sse)"),
    "fetch-sse": ("sse", "fetch() stream (POST /sse)"),
    "fetch-ndjson": ("ndjson", "fetch() stream (GET /ndjson)"),
    "fetch-longpoll": ("longpoll", "fetch() long polling"),
    "fetch-shortpoll": ("shortpoll", "fetch() short polling"),
    "fetch-oneshot": ("oneshot", "fetch() one-shot"),
    "websocket": ("websocket", "WebSocket (/ws)"),
}
# "none" is the control: every API must be refused without a credential
CREDENTIALS = ("none", "header", "cookie", "ticket", "query")
TICKET_PROBES = ("websocket",)  # tickets are redeemed on GET /ws only (transports/web/guard.py)
COMPLETE, REFUSED, INEXPRESSIBLE = "complete", "refused (401)", "cannot be expressed"
# Chromium's console text for a WebSocket handshake answered 401 (or 407)
WS_AUTH_FAILED = "HTTP Authentication failed"
SETTLE_S = 2.0  # at most this long for CDP or the console to report a failed probe's status

_PROBE_JS = (
    "async ([a, c, k, p, ms]) => (await import('/static/authprobe.js')).probe(a, c, k, p, ms)"
)


def applies(probe: str, credential: str) -> bool:
    """Whether a credential form is one the server takes on this probe's requests."""
    return credential != "ticket" or probe in TICKET_PROBES


def outcome(page: dict[str, Any], statuses: Sequence[int], console: Sequence[str]) -> str:
    """One probe's outcome from the page's report, the HTTP statuses CDP saw for its requests
    and the console errors it caused (see the module docstring)."""
    if page["outcome"] == "inexpressible":
        return INEXPRESSIBLE
    if page["outcome"] == "complete":
        return COMPLETE
    if page["status"] == 401 or 401 in statuses or any(WS_AUTH_FAILED in m for m in console):
        return REFUSED
    return f"failed: {str(page['detail'])[:120]}"


async def probe(
    session: BrowserSession, name: str, credential: str, key: str, params: GenParams,
    timeout_s: float = 10.0,
) -> dict[str, object]:  # fmt: skip
    """Try one stream of probe `name` carrying `credential` (made from the key credential
    `key`) in the session's page; one row: probe, transport, credential, outcome, tokens,
    statuses (CDP's, of the stream's own requests), detail."""
    assert session.page is not None, "use the session in `async with`"
    session.ledger = ledger = CdpLedger()  # the session's CDP listeners feed the current one
    errors_before = len(session.console_errors)
    page = await session.page.evaluate(
        _PROBE_JS, [name, credential, key, params.as_dict(), int(timeout_s * 1e3)]
    )
    deadline = time.monotonic() + SETTLE_S
    while True:  # CDP's and the console's events may trail the page's verdict
        statuses = [r.status for r in ledger.requests.values()
                    if r.status and not r.path.startswith(("/auth/", "/static/"))]  # fmt: skip
        console = session.console_errors[errors_before:]
        found = outcome(page, statuses, console)
        if not found.startswith("failed") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return {
        "probe": name,
        "api": PROBES[name][1],
        "transport": PROBES[name][0],
        "credential": credential,
        "outcome": found,
        "tokens": int(page["tokens"]),
        "statuses": " ".join(str(s) for s in statuses),
        "detail": str(page["detail"])[:200],
    }
