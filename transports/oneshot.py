"""One-shot request/response, the traditional baseline (sans-I/O).

    GET /oneshot?params   or   POST /oneshot {params}
answers once generation has ended, with the whole answer as one batch (the shape of
`transports.longpoll`): {"stream", "next": N, "done": true, "reason", "tokens": [...]}
and a Content-Length, so nothing is chunked.
"""

from __future__ import annotations

from transports.longpoll import Batch, decode_batch, encode_batch

__all__ = ["Batch", "decode_batch", "encode_batch"]
