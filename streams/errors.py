"""The project's exception tree: one root, translated once at each I/O boundary.

    PushlabError
    ├── ParamError          bad generation or request parameter      -> HTTP 400
    ├── StreamNotFound      unknown or expired stream id             -> HTTP 404
    ├── AuthenticationError no credential, or a wrong or expired one        -> HTTP 401
    ├── PermissionDenied    a credential, but not this stream's owner, or a
    │                       request from a host name or origin not allowed  -> HTTP 403
    ├── UnsupportedMediaType a request body that is not application/json   -> HTTP 415
    ├── RequestTimeout      a request body not received within its time   -> HTTP 408
    ├── QuotaExceeded       one client holds its share of a shared resource -> HTTP 429
    ├── StreamLimitError    the hub holds as many streams (or bytes) as allowed -> HTTP 503
    ├── HistoryGone         a resume from before what the shared log still keeps -> HTTP 410
    ├── LogUnavailable      the shared log (Redis) cannot be reached      -> HTTP 503
    ├── ProtocolError       bytes from the peer break a wire format (client side)
    │   └── SSEError        an event stream that cannot be interpreted
    ├── TransportError      a client could not complete a stream (connect, HTTP status, close)
    ├── EnvironmentUnavailable  this machine lacks what a run needs (nginx, network
    │                       namespaces, Chromium): the one error the suite skips an experiment for
    ├── ChildStartError     a child process we started (server, proxy) did not become ready
    └── ClusterError        a Dask cluster cannot run a fleet as asked
        └── ClusterUnavailable  its scheduler does not answer, or it has no worker

An error may carry `retry_after_s`: the boundary sends it as `Retry-After` (RFC 9110
section 10.2.3), so a well-behaved client knows when to come back.

Server handlers turn the first ten into JSON error bodies
`{"error": {"message", "type", "param"}}` (built by transports/errors.py); clients record
the last two in the `error` column of the streams table.
"""

from __future__ import annotations


class PushlabError(Exception):
    """Root of every error pushlab raises on purpose."""

    status: int = 500
    type: str = "server_error"

    retry_after_s: float | None = None  # sent as Retry-After (whole seconds, rounded up)

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class ParamError(PushlabError):
    """A parameter is unknown, missing, of the wrong type or out of range."""

    status = 400
    type = "invalid_request_error"


class StreamNotFound(PushlabError):
    """No stream with that id exists (never created, or past its retention)."""

    status = 404
    type = "not_found_error"


class AuthenticationError(PushlabError):
    """No credential where one is required, or one that is malformed, wrongly signed or
    expired (the message says which, never echoing the credential)."""

    status = 401
    type = "authentication_error"


class PermissionDenied(PushlabError):
    """A valid credential that may not do this: another identity's stream, or a request
    whose Host or Origin the server does not serve."""

    status = 403
    type = "permission_error"


class UnsupportedMediaType(PushlabError):
    """A request body that is not `application/json`: a browser page of another origin can
    send `text/plain` without asking (no CORS preflight), so the server reads nothing else."""

    status = 415
    type = "unsupported_media_type_error"


class RequestTimeout(PushlabError):
    """A request whose body did not arrive within the server's body timeout (a client
    trickling bytes to hold a connection and a handler)."""

    status = 408
    type = "timeout_error"


class QuotaExceeded(PushlabError):
    """One client (an identity, or an address when anonymous) holds its share of a resource
    every client shares: connections, running streams, held-token memory."""

    status = 429
    type = "rate_limit_error"
    retry_after_s = 1.0


class StreamLimitError(PushlabError):
    """The hub already holds its maximum number of running streams, or its memory budget
    for held tokens is spent."""

    status = 503
    type = "overloaded_error"
    retry_after_s = 1.0


class HistoryGone(PushlabError):
    """The tokens a resume asks for were trimmed from the shared log: the client is told of
    the gap (and where the kept history starts) instead of being served a silent hole."""

    status = 410
    type = "history_gone_error"


class LogUnavailable(PushlabError):
    """The shared stream log (Redis) cannot be reached: at start a one-line error; mid-run
    running streams end with this reason and new ones get 503 until it is back."""

    status = 503
    type = "log_unavailable_error"


class ProtocolError(PushlabError):
    """The peer sent bytes that break the wire format."""

    type = "protocol_error"


class SSEError(ProtocolError):
    """An event stream that cannot be interpreted."""


class TransportError(PushlabError):
    """A client could not complete a stream: connect failure, bad status, early close.

    `retryable` says whether reconnecting could help (a cut connection) or not (a 4xx).
    """

    type = "transport_error"

    def __init__(self, message: str, *, param: str | None = None, retryable: bool = True) -> None:
        super().__init__(message, param=param)
        self.retryable = retryable


class EnvironmentUnavailable(PushlabError):
    """This machine lacks something a run needs: a binary (nginx, Chromium), a kernel feature
    (network namespaces, nftables), or the permission to use it.

    The suite skips an experiment for this error alone and says why; any other exception is a
    bug and fails the run with its traceback (a bug filed under "this machine cannot" hides).
    """

    type = "environment_unavailable"


class ChildStartError(PushlabError):
    """A child process we started did not print its ready line in time, or exited first.

    Not `EnvironmentUnavailable`: the machine has what the child needs, the child failed.
    """

    type = "child_start_error"


class ClusterError(PushlabError):
    """A Dask cluster cannot run a fleet as asked (clients/cluster.py): e.g. a target on
    loopback that its workers on other machines cannot reach."""

    type = "cluster_error"


class ClusterUnavailable(ClusterError):
    """The Dask scheduler does not answer, or has no worker (the CLI: one line, exit 1)."""

    type = "cluster_unavailable"
