"""The seeded token source every transport streams: what each token says and when it is due.

Model: an LLM answer has a prefill phase, during which the model reads the prompt and emits
nothing, then a decode phase emitting one token per step. So token 0 is due `ttft_ms` after the
stream starts, and each following token `1e9 / rate` ns after the previous one, times a factor
`1 + jitter * u` with `u` uniform in [-1, 1]: the mean gap stays `1 / rate` s, `jitter` is the
relative spread of the gaps, and `jitter == 0` is an exact metronome.

Texts and schedule come from two independent RNGs derived from `seed`, so the schedule does
not depend on the corpus (`text`) and neither depends on the `envelope` or on the transport:
the same parameters give the same plan everywhere.
"""

from __future__ import annotations

import itertools
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar, overload

from streams.corpus import CORPORA, tokens_of
from streams.params import GenParams


def _is_word_start(token: str, previous: str) -> bool:
    return token != "\n\n" and (
        token[0] == " " or previous == "\n\n" or "\u3400" <= token[0] <= "\u9fff"
    )


T = TypeVar("T")

# Per corpus, the token indices where a reading may start: never inside a word or at punctuation.
_STARTS: dict[str, tuple[int, ...]] = {
    name: tuple(i for i, t in enumerate(tokens) if _is_word_start(t, tokens[i - 1]))
    for name, tokens in CORPORA.items()
}


def _start(params: GenParams) -> int:
    """Where in its corpus the stream `params` describes starts reading."""
    corpus = tokens_of(params.text)
    return (random.Random(params.seed).choice(_STARTS[params.text]) + params.offset) % len(corpus)


def texts(params: GenParams) -> list[str]:
    """`params.tokens` token texts: corpus `params.text` read from a seeded start, wrapping,
    skipping the first `params.offset` (a continuation goes on where the last part stopped)."""
    corpus = tokens_of(params.text)
    start = _start(params)
    rotated = corpus[start:] + corpus[:start]
    whole, rest = divmod(params.tokens, len(rotated))
    return list(rotated * whole + rotated[:rest])


def offsets_ns(params: GenParams) -> list[int]:
    """When each token is due, in ns after the stream starts: integers, non-decreasing."""
    first_ns = params.ttft_ms * 1e6
    gap_ns = 1e9 / params.rate
    count = params.tokens
    if params.jitter == 0:
        return [round(first_ns + gap_ns * i) for i in range(count)]
    draw = random.Random(f"{params.seed}-gaps").random
    spread = params.jitter
    factors = (1.0 + spread * (2.0 * draw() - 1.0) for _ in range(count - 1))
    steps = itertools.accumulate(factors, initial=0.0)  # sum of gap factors up to each token
    return [round(first_ns + gap_ns * s) for s in steps]


class _Computed(Sequence[T]):
    """A read-only sequence whose items are computed when asked for, equal to any sequence
    of the same items: `plan()` holds a stream's plan in a few numbers instead of a tuple
    of texts and a tuple of ints, about 48 bytes per planned token (1.3 KB of each idle
    stream at 20 tokens, 24 KB at 500: benchmarks/analysis.md, 2026-11-21)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def item(self, i: int) -> T:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> list[T]: ...
    def __getitem__(self, i: int | slice) -> T | list[T]:
        if isinstance(i, slice):
            return [self.item(j) for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError("plan index out of range")
        return self.item(i)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(other) != self.n:
            return False
        return all(a == b for a, b in zip(self, other, strict=True))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"


class _Rotated(_Computed[str]):
    """`texts(params)` without the copy: the shared corpus read from `start`, wrapping."""

    __slots__ = ("corpus", "start")

    def __init__(self, corpus: Sequence[str], start: int, n: int) -> None:
        super().__init__(n)
        self.corpus, self.start = corpus, start

    def item(self, i: int) -> str:
        return self.corpus[(self.start + i) % len(self.corpus)]


class _Metronome(_Computed[int]):
    """`offsets_ns(params)` for `jitter == 0`: the same expression, per index."""

    __slots__ = ("first_ns", "gap_ns")

    def __init__(self, first_ns: float, gap_ns: float, n: int) -> None:
        super().__init__(n)
        self.first_ns, self.gap_ns = first_ns, gap_ns

    def item(self, i: int) -> int:
        return round(self.first_ns + self.gap_ns * i)


class _Packed(_Computed[int]):
    """Jittered offsets, drawn once (the RNG is sequential) and packed 8 bytes each."""

    __slots__ = ("values",)

    def __init__(self, values: list[int]) -> None:
        super().__init__(len(values))
        self.values = array("q", values)

    def item(self, i: int) -> int:
        return self.values[i]


@dataclass(frozen=True, slots=True)
class Plan:
    """One stream's tokens: `texts[i]` is due `offsets_ns[i]` ns after the stream starts."""

    texts: Sequence[str]
    offsets_ns: Sequence[int]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.offsets_ns):
            raise ValueError("a plan needs exactly one offset per token")


def plan(params: GenParams) -> Plan:
    """The texts and schedule of the stream `params` describes, identical for every transport."""
    corpus, n = tokens_of(params.text), params.tokens
    if params.jitter == 0:
        offsets: Sequence[int] = _Metronome(params.ttft_ms * 1e6, 1e9 / params.rate, n)
    else:
        offsets = _Packed(offsets_ns(params))
    return Plan(texts=_Rotated(corpus, _start(params), n), offsets_ns=offsets)
