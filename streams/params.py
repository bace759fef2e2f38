"""Generation parameters: one set of names for query strings, JSON bodies, WebSocket start
messages and CLI flags, validated in one place."""

from __future__ import annotations

import dataclasses
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


def _coerce(name: str, raw: object) -> object:
    if name in _NUMERIC:
        kind, low, high = _NUMERIC[name]
        if isinstance(raw, bool):
            raise ParamError(f"'{name}' must be a number, got {raw!r}", param=name)
        try:
            if kind is int:
                if isinstance(raw, float) and not raw.is_integer():
                    raise ValueError
                value: float = int(raw)  # type: ignore[call-overload]
            else:
                value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ParamError(
                f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {raw!r}",
                param=name,
            ) from None
        if not low <= value <= high:  # also rejects NaN
            raise ParamError(
                f"'{name}' must be between {_format(low)} and {_format(high)}, got {raw!r}",
                param=name,
            )
        return value
    choices = CORPORA if name == "text" else ENVELOPES
    if raw not in choices:
        raise ParamError(f"'{name}' must be one of {', '.join(choices)}, got {raw!r}", param=name)
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
        raise ParamError(f"unknown parameter '{unknown[0]}'", param=unknown[0])
    changes = {k: _coerce(k, v) for k, v in values.items() if k in PARAM_NAMES}
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def parse_number(
    values: Mapping[str, object], name: str, default: float, low: float, high: float
) -> float:
    """Read one transport-level number (`after`, `wait`, ...) with the same error shape."""
    if name not in values:
        return default
    raw = values[name]
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ParamError(f"'{name}' must be a number, got {raw!r}", param=name) from None
    if not low <= value <= high:
        raise ParamError(
            f"'{name}' must be between {_format(low)} and {_format(high)}, got {raw!r}", param=name
        )
    return value
