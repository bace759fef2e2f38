"""Shared fixtures: a real pushlab server on 127.0.0.1 inside the test's event loop.

Fixtures only: what test modules import (UNIT, Served, the wait-until helpers) lives in
`tests/support.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from clients.base import Target
from server import make_app
from tests.support import Served, ServeFactory
from transports.web.common import ServerConfig


@pytest.fixture
async def serve() -> AsyncIterator[ServeFactory]:
    """`await serve(**config_overrides)` starts a server; all are stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(**overrides: object) -> Served:
        config = dataclasses.replace(ServerConfig(host="127.0.0.1", port=0), **overrides)  # type: ignore[arg-type]
        runner = web.AppRunner(make_app(config), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return Served(Target("127.0.0.1", runner.addresses[0][1]), runner.app)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def served(serve: ServeFactory) -> Served:
    return await serve()
