"""Generation parameters: one set of names for query strings, JSON bodies, WebSocket start
messages and CLI flags, validated in one place."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from streams.errors import ParamError

CORPORA = ("en", "zh", "mixed")
ENVELOPES = ("text", "openai")

# name -> (type, minimum, maximum); the limits keep one stream's memory bounded.
_NUMERIC: dict[str, tuple[type, float, float]] = {
    "tokens": (int, 1, 100_000),
    "rate": (float, 0.1, 100_000.0),
    "ttft_ms": (float, 0.0, 60_000.0),
    "jitter": (float, 0.0, 1.0),
    "seed": (int, 0, 2**63 - 1),
    "offset": (int, 0, 10_000_000),
}


@dataclasses.dataclass(frozen=True, slots=True)
class GenParams:
    """What to generate: `tokens` tokens at `rate` tokens/s after `ttft_ms`, gaps by `jitter`."""

    tokens: int = 64
    rate: float = 20.0
    ttft_ms: float = 200.0
    jitter: float = 0.0
    seed: int = 0
    text: str = "en"
    envelope: str = "text"
    offset: int = 0  # continue the seeded answer from this token on (a follow-up request)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def duration_s(self) -> float:
        """How long the stream takes on schedule: the first token's delay plus tokens / rate."""
        return self.ttft_ms / 1e3 + self.tokens / self.rate

    def as_query(self) -> dict[str, str]:
        """The parameters as query-string values that `parse_params` reads back unchanged."""
        return {k: _format(v) for k, v in self.as_dict().items()}


PARAM_NAMES = frozenset(f.name for f in dataclasses.fields(GenParams))


def _format(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# Numbers written as text (a query string, a CLI flag): ASCII decimal only. Python's own
# int() and float() also take "5_0", " 5", "nan", "inf" and any Unicode digit ("٥", and
# "²" passes str.isdigit() but not int()); a parameter means what a JSON or C reader of
# the same text would read, or is refused.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _show(raw: object) -> str:
    """`raw` quoted for an error message, cut short: a message never echoes a whole body."""
    text = repr(raw)
    return text if len(text) <= 64 else text[:60] + "..."


def _number(name: str, raw: object, integer: bool) -> float:
    """`raw` as a number: a JSON number (not a bool, NaN or an infinity) or ASCII decimal
    text; an integer when `integer` (a float only when it is whole)."""
    if isinstance(raw, str):
        # int() refuses over 4,300 digits; 1e999 reads as inf, which no range holds
        if len(raw) <= 64 and (_INTEGER if integer else _DECIMAL).fullmatch(raw):
            return int(raw) if integer else float(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    elif isinstance(raw, float) and math.isfinite(raw) and (raw.is_integer() or not integer):
        return int(raw) if integer else raw
    kind = "an integer" if integer else "a number"
    raise ParamError(f"'{name}' must be {kind}, got {_show(raw)}", param=name)


def _coerce(name: str, raw: object) -> object:
    if name in _NUMERIC:
        kind, low, high = _NUMERIC[name]
        value = _number(name, raw, kind is int)
        if not low <= value <= high:
            raise ParamError(
                f"'{name}' must be between {_format(low)} and {_format(high)}, got {_show(raw)}",
                param=name,
            )
        return value if kind is int else float(value)
    choices = CORPORA if name == "text" else ENVELOPES
    if raw not in choices:
        raise ParamError(
            f"'{name}' must be one of {', '.join(choices)}, got {_show(raw)}", param=name
        )
    return raw


def parse_params(
    values: Mapping[str, object],
    *,
    defaults: GenParams | None = None,
    allowed_extra: frozenset[str] = frozenset(),
) -> GenParams:
    """Validate `values` (strings from a query or JSON values) into `GenParams`.

    Unknown names raise `ParamError` unless listed in `allowed_extra` (the transport's own
    parameters, read by the caller)."""
    base = defaults or GenParams()
    unknown = sorted(set(values) - PARAM_NAMES - allowed_extra)
    if unknown:
        name = unknown[0][:64]
        raise ParamError(f"unknown parameter '{name}'", param=name)
    changes = {k: _coerce(k, v) for k, v in values.items() if k in PARAM_NAMES}
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def parse_number(
    values: Mapping[str, object],
    name: str,
    default: float,
    low: float,
    high: float,
    *,
    integer: bool = False,
) -> float:
    """Read one transport-level number (`after`, `wait`, ...) with the same error shape;
    with `integer`, a whole number only (a cursor: `after=1.5` is refused, not truncated)."""
    if name not in values:
        return default
    raw = values[name]
    value = _number(name, raw, integer)
    if not low <= value <= high:
        raise ParamError(
            f"'{name}' must be between {_format(low)} and {_format(high)}, got {_show(raw)}",
            param=name,
        )
    return value
