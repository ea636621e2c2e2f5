"""The HTTP transport under :class:`~envs.chat.openai_client.OpenAIChatClient`.

The ``openai`` SDK owns retries and backoff; this transport, handed to it through
``http_client=httpx2.Client(transport=...)``, adds what the SDK cannot see:

- A wall-clock deadline per attempt. httpx restarts its read timeout on every byte, so a server
  that trickles one byte a second never times out. Here an httpcore network backend gives every
  connect, read and write at most the time left until the attempt's deadline, so a slow attempt
  ends in an ordinary ``httpx2.ReadTimeout`` that the SDK retries like any other timeout.
- A check of 2xx bodies. A body that is not valid JSON, or that a caller-given check calls
  unusable (no choices, empty content), raises :class:`UnusableReply`, an ``httpx2`` protocol
  error, so the SDK retries it too instead of handing back a broken object.
- Attempt counting per logical request: :meth:`AttemptTransport.tracking` marks the calling
  thread's next attempts as one request, so retries are counted even though the SDK makes them.

The whole body is read inside the attempt (replies are small; nothing here streams).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpcore2
import httpx2

BodyCheck = Callable[[Any], "str | None"]  # parsed 2xx body -> why it is unusable, or None

# httpcore's errors as httpx's, most specific first (httpx's own mapping is private).
_ERRORS: list[tuple[type[Exception], type[httpx2.HTTPError]]] = [
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.ProxyError, httpx2.ProxyError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
]


class UnusableReply(httpx2.RemoteProtocolError):
    """A 2xx reply whose body cannot be used (malformed JSON, no choices, empty content)."""


@dataclass
class AttemptLog:
    """The HTTP attempts of one logical request.

    Attributes:
        attempts: Attempts made so far (the first one and every retry).
        check: Applied to each parsed 2xx body; a returned message makes the attempt fail.
    """

    attempts: int = 0
    check: BodyCheck | None = None


class _DeadlineBackend(httpcore2.NetworkBackend):
    """A network backend whose I/O never outlasts the calling thread's current deadline."""

    def __init__(self) -> None:
        self._inner = httpcore2.SyncBackend()
        self._local = threading.local()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Bounds all I/O of the calling thread inside the block to ``seconds`` in total."""
        previous = getattr(self._local, "at", None)
        self._local.at = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.at = previous

    def budget(self, timeout: float | None, error: type[Exception]) -> float | None:
        """``timeout`` cut to the time left; raises ``error`` once the deadline has passed."""
        at = getattr(self._local, "at", None)
        if at is None:
            return timeout
        left = at - time.monotonic()
        if left <= 0:
            raise error("the attempt ran out of time")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        timeout = self.budget(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options), self)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        timeout = self.budget(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options), self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore2.NetworkStream):
    """A connection whose reads and writes are bounded by the backend's deadline."""

    def __init__(self, inner: httpcore2.NetworkStream, backend: _DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.budget(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.budget(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        timeout = self._backend.budget(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """Re-raises httpcore's errors as the matching httpx errors, which the SDK knows how to retry."""
    try:
        yield
    except Exception as err:
        target = next((cls for core, cls in _ERRORS if isinstance(err, core)), None)
        if target is None:
            raise
        raise target(str(err) or type(err).__name__) from err


class AttemptTransport(httpx2.BaseTransport):
    """An httpx transport with per-attempt deadlines, 2xx body checks and attempt counting.

    Args:
        base_url: The server the client talks to; picks the proxy from ``$HTTPS_PROXY`` /
            ``$HTTP_PROXY`` (unless ``$NO_PROXY`` exempts the host), as httpx would.
        timeout: Seconds one attempt may take from connecting to the last byte of the body.
        on_attempt: Called with the attempt's 1-based number within its logical request, once per
            attempt made inside :meth:`tracking`.
        max_keepalive: Idle connections kept open for reuse.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        on_attempt: Callable[[int], None] | None = None,
        max_keepalive: int = 8,
    ) -> None:
        self.timeout = float(timeout)
        self.on_attempt = on_attempt
        self._local = threading.local()
        self._backend = _DeadlineBackend()
        url = httpx2.URL(base_url)
        proxy = urllib.request.getproxies().get(url.scheme)
        use_proxy = proxy and not urllib.request.proxy_bypass(url.host)
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(),
            proxy=httpcore2.Proxy(proxy) if use_proxy else None,
            max_connections=None,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=5.0,
            network_backend=self._backend,
        )

    @contextlib.contextmanager
    def tracking(self, check: BodyCheck | None = None) -> Iterator[AttemptLog]:
        """Counts the calling thread's attempts inside the block as one logical request.

        Args:
            check: Applied to each parsed 2xx body (see :class:`AttemptLog`).

        Yields:
            The request's :class:`AttemptLog`, updated as attempts are made.
        """
        log = AttemptLog(check=check)
        previous = getattr(self._local, "log", None)
        self._local.log = log
        try:
            yield log
        finally:
            self._local.log = previous

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Sends one attempt within its deadline, reads the whole body and checks a 2xx body."""
        log = getattr(self._local, "log", None)
        if log is not None:
            log.attempts += 1
            if self.on_attempt is not None:
                self.on_attempt(log.attempts)
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with self._backend.deadline(self.timeout), _as_httpx_errors():
            core_response = self._pool.handle_request(core_request)
            try:
                body = b"".join(core_response.stream)  # the body too is read before the deadline
            finally:
                core_response.close()
        response = httpx2.Response(
            core_response.status, headers=core_response.headers, content=body,
            extensions=core_response.extensions, request=request,
        )
        if 200 <= response.status_code < 300:
            self._check_body(response, None if log is None else log.check)
        return response

    @staticmethod
    def _check_body(response: httpx2.Response, check: BodyCheck | None) -> None:
        is_json = "json" in response.headers.get("content-type", "")
        if not is_json and check is None:
            return
        try:
            payload = json.loads(response.content)
        except ValueError as err:
            raise UnusableReply(f"the {response.status_code} reply's body is not valid JSON ({err})") from None
        problem = check(payload) if check is not None else None
        if problem:
            raise UnusableReply(problem)

    def close(self) -> None:
        """Closes the pooled connections."""
        self._pool.close()
