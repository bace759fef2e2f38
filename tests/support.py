"""What test modules import: the time UNIT, the served-server handle, wait-until helpers and
a real Chromium page.

Every timeout in the tests is a multiple of UNIT (env PUSHLAB_TEST_UNIT, default 1.0), so a
slow machine scales them all at once. Test modules import from here, never from
`conftest.py`: pytest imports conftest itself, and importing it a second time as
`tests.conftest` only works when the repository root happens to be on sys.path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from aiohttp import web

from clients.base import Target
from clients.browser import CHROMIUM, CHROMIUM_ARGS
from tests.mirror import MIRROR as MIRROR  # a throw-away transport: `with registered(MIRROR):`
from transports.registry import registered as registered

UNIT = float(os.environ.get("PUSHLAB_TEST_UNIT", "1.0"))

# How often a wait re-checks its condition: short enough not to slow a test down, long
# enough not to spin a core on this 2-core machine. Not a window, so not scaled by UNIT.
POLL_S = 0.01

T = TypeVar("T")


@dataclasses.dataclass
class Served:
    target: Target
    app: web.Application

    @property
    def url(self) -> str:
        return self.target.url


ServeFactory = Callable[..., Awaitable[Served]]


def _timed_out(what: str, timeout_units: float) -> AssertionError:
    return AssertionError(f"timed out after {timeout_units * UNIT:g} s waiting until {what}")


def wait_until(predicate: Callable[[], T], *, timeout_units: float = 5.0, what: str) -> T:
    """Return the first truthy value of `predicate()`, polled until `timeout_units` × UNIT
    seconds have passed; then fail saying `what` was awaited."""
    deadline = time.monotonic() + timeout_units * UNIT
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_units)
        time.sleep(POLL_S)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]], *, timeout_units: float = 5.0, what: str
) -> T:
    """`wait_until` inside the event loop: `predicate` may be a plain or async callable, and
    the loop keeps running between checks."""
    deadline = time.monotonic() + timeout_units * UNIT
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_units)
        await asyncio.sleep(POLL_S)


# -- a real browser --------------------------------------------------------------------------


@contextlib.contextmanager
def chromium_page() -> Iterator[Any]:
    """A fresh 1280×900 page in Debian's headless Chromium (installed by `make system`, never
    a browser download), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()
