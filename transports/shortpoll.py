"""Short polling: the long-poll cursor protocol without holding (sans-I/O).

    POST /shortpoll            -> 201 + batch
    GET  /shortpoll/{id}?after=SEQ   answers at once, with whatever tokens exist after SEQ

The client polls at an interval it chooses (`interval_ms`); the batch shape is the one in
`transports.longpoll`.
"""

from __future__ import annotations

from transports.longpoll import Batch, decode_batch, encode_batch

__all__ = ["Batch", "decode_batch", "encode_batch"]
