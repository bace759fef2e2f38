"""The run spec every experiment shares: one vocabulary of settings, declared once.

Each experiment's `Spec` is a frozen dataclass derived from `RunSpec` (what every experiment
has: the transports it measures and the generator's seed) that adds its own sweep. Where it
takes one of the shared settings below (clients, tokens, rate, ttft_ms, server, net), it uses
that name and type, so `pushlab run NAME --tokens 50 --server URL` means the same to every
experiment, the names in `meta.json` match, and a notebook's `dataclasses.replace(spec,
tokens=50)` reads like the CLI. A shared setting an experiment does not have is one it cannot
take (latency sweeps `rates_hz` instead of one `rate`; loss starts its own server inside a
network namespace), and the CLI refuses it in one line rather than ignore it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from streams.errors import ParamError
from streams.params import parse_params
from transports import registry


def all_transports() -> tuple[str, ...]:
    """Every registered transport, read when a spec is made (so a registered one is in)."""
    return tuple(registry.KEYS)


def over_tcp() -> tuple[str, ...]:
    """The transports a TCP-only path can carry (a fault proxy, nginx, a TLS front, a cut):
    every registered one whose stack is TCP. The default of the experiments whose path is
    TCP all the way; QUIC (WebTransport) is measured where UDP can pass (latency, loss,
    http3)."""
    return registry.keys_where(lambda t: t.stack == "tcp")


def check_over_tcp(transports: tuple[str, ...], path: str) -> None:
    """ParamError (one line) when a transport that cannot cross `path` was asked for."""
    for key in transports:
        if registry.get(key).stack != "tcp":
            raise ParamError(
                f"{key} runs over QUIC (UDP), and {path} carries TCP only: "
                "choose TCP transports here",
                param="transports",
            )


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What every experiment has: the transports measured and the generator's seed."""

    transports: tuple[str, ...] = dataclasses.field(default_factory=all_transports)
    seed: int = 1


def _transports(text: str) -> tuple[str, ...]:
    try:
        return tuple(registry.parse_keys(text))
    except ValueError as exc:
        raise ParamError(str(exc), param="transports") from None


def _server(text: str) -> str:
    from clients.net import Target

    try:
        Target.parse(text)
    except ValueError as exc:
        raise ParamError(str(exc), param="server") from None
    return text


def _net(text: str) -> str:
    from netem.conditions import parse_net

    parse_net(text)  # NetSpecError is a ParamError: one line, exit 2
    return text


def _number(kind: type[int] | type[float], name: str) -> Callable[[str], Any]:
    def parse(text: str) -> int | float:
        try:
            return kind(text)
        except ValueError:
            message = f"{name}: cannot read {text!r} as {kind.__name__}"
            raise ParamError(message, param=name) from None

    return parse


def _positive_int(text: str) -> int:
    value = int(_number(int, "clients")(text))
    if value < 1:
        raise ParamError("clients must be at least 1", param="clients")
    return value


@dataclasses.dataclass(frozen=True)
class Setting:
    """One shared setting: its spec field, CLI flag, parser (text -> value) and help."""

    field: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = ""


SETTINGS: tuple[Setting, ...] = (
    Setting("transports", "--transport", _transports, "'all' or a comma list of transports",
            "KEYS"),
    Setting("clients", "--clients", _positive_int, "concurrent streams per point", "N"),
    Setting("tokens", "--tokens", _number(int, "tokens"), "tokens per answer", "N"),
    Setting("rate", "--rate", _number(float, "rate"), "tokens per second", "HZ"),
    Setting("ttft_ms", "--ttft-ms", _number(float, "ttft_ms"),
            "delay before the first token, in ms", "MS"),
    Setting("seed", "--seed", _number(int, "seed"), "generator seed", "N"),
    Setting("server", "--server", _server,
            "measure this server (or a proxy in front of it) instead of starting one", "URL"),
    Setting("net", "--net", _net, "fault-proxy conditions between clients and server, e.g. "
            "'delay=50ms,jitter=5ms,bandwidth=1mbit,cut_after=4kB'", "SPEC"),
)  # fmt: skip
GENERATION = ("tokens", "rate", "ttft_ms", "seed")  # validated as the wire validates them


def argtype(field: str) -> Callable[[str], Any]:
    """The setting's parser for argparse (its error becomes argparse's one-line message)."""
    import argparse

    parse = next(s.parse for s in SETTINGS if s.field == field)

    def checked(text: str) -> Any:
        try:
            return parse(text)
        except ParamError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return checked


def help_of(field: str) -> str:
    return next(s.help for s in SETTINGS if s.field == field)


def takes(spec_type: type[Any], setting: str) -> bool:
    """Whether an experiment's spec has this shared setting."""
    return setting in {f.name for f in dataclasses.fields(spec_type)}


def apply(spec: Any, values: dict[str, Any], experiment: str) -> Any:
    """The spec with the given shared settings (field -> value, parsed by `argtype` or still
    text) applied; a setting the spec does not take, or a value out of the wire's range, is a
    ParamError naming the flag."""
    by_field = {s.field: s for s in SETTINGS}
    changes: dict[str, Any] = {}
    for name, text in values.items():
        setting = by_field[name]
        if not takes(type(spec), name):
            raise ParamError(
                f"{experiment} cannot take {setting.flag}: it is not one of its settings "
                f"(they are the fields of its spec in meta.json; see --set)",
                param=name,
            )
        changes[name] = setting.parse(text) if isinstance(text, str) else text
    spec = dataclasses.replace(spec, **changes)
    parse_params({k: getattr(spec, k) for k in GENERATION if takes(type(spec), k)})
    return spec
