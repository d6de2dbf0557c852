"""The pod's HTTP endpoint: /metrics for the operator's scrape, /epochs?after=N for the epochs it missed
between two scrapes, /healthz, and the authenticated POST /stop.

The server shares the training process, so no client may cost it more than a bounded number of threads:
every read and write times out, at most `max_connections` connections are served at once, and when all
of them are taken the oldest connection still sending its request head is dropped for the new one (a
slowloris cannot starve the operator's POST /stop). Clients that hang up are no error worth a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import logging
import re
import socket
import sys
import threading
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST

from .control import DEFAULT_REASON, StopFlag, clean_cause
from .metrics import TrainerMetrics

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 32
POLL_S = 0.05
REQUEST_TIMEOUT_S = 10.0
_DIGITS = re.compile(r"[0-9]{1,9}")


class ControlServer:
    """Serves on a daemon thread so the training loop never blocks on a scrape or a stop request.

    With accept_stop=False the endpoint answers 404, like a trainer without stopline's control endpoint:
    the operator then falls back to suspending the Job, i.e. SIGTERM.
    """

    def __init__(
        self,
        metrics: TrainerMetrics,
        flag: StopFlag,
        *,
        token: str,
        bind_address: str,
        port: int,
        rank: int,
        accept_stop: bool = True,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        handler = _handler_class(metrics, flag, token.encode(), rank, accept_stop, request_timeout_s)
        family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
        self._httpd = _BoundedServer((bind_address, port), handler, family, max_connections)
        # a short poll: close() waits for serve_forever to notice, and the trainer's exit waits for close()
        serve = functools.partial(self._httpd.serve_forever, poll_interval=POLL_S)
        self._thread = threading.Thread(target=serve, name="stopline-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, forever if it never ran
            self._httpd.shutdown()
        self._httpd.server_close()


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them; the oldest idle one makes room."""

    daemon_threads = True
    request_queue_size = 128  # a burst of connections waits in the kernel, not in SYN retries
    _EVICTION_WAIT_S = 2.0  # an evicted connection's thread ends as soon as its read fails

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        family: socket.AddressFamily,
        max_connections: int,
    ) -> None:
        self.address_family = family
        self.max_connections = max_connections
        self._changed = threading.Condition()
        self._served = 0
        self._awaiting_head: dict[socket.socket, None] = {}  # insertion order: oldest first
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._admit(request):
            log.debug(
                "all %d connections busy serving requests: dropped %s", self.max_connections, client_address
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started (e.g. none left): give the slot back
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def head_received(self, connection: socket.socket) -> None:
        """The request line and headers are in: this connection now serves a request, it is not evicted."""
        with self._changed:
            self._awaiting_head.pop(connection, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("%s hung up or stalled: %r", client_address, error)
        else:
            log.exception("error while serving %s", client_address)

    def _admit(self, connection: socket.socket) -> bool:
        with self._changed:
            if self._served >= self.max_connections:
                oldest = next(iter(self._awaiting_head), None)
                if oldest is None:
                    return False
                del self._awaiting_head[oldest]
                _hang_up(oldest)  # its blocked read returns at once and its thread ends
                if not self._changed.wait_for(
                    lambda: self._served < self.max_connections, self._EVICTION_WAIT_S
                ):
                    return False
            self._served += 1
            self._awaiting_head[connection] = None
            return True

    def _release(self, connection: socket.socket) -> None:
        with self._changed:
            self._served -= 1
            self._awaiting_head.pop(connection, None)
            self._changed.notify_all()


def _hang_up(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already gone
        connection.shutdown(socket.SHUT_RDWR)


def body_length(headers: Message) -> int | None:
    """The request body's length in bytes, or None when the headers do not state one we accept.

    No Content-Length and no Transfer-Encoding means an empty body (RFC 9112, 6.3); chunked bodies, signs,
    non-digits, conflicting duplicates and lengths over MAX_BODY are refused.
    """
    if headers.get("Transfer-Encoding") is not None:
        return None
    values = {value.strip() for value in headers.get_all("Content-Length") or ()}
    if not values:
        return 0
    if len(values) != 1:
        return None
    (value,) = values
    if not _DIGITS.fullmatch(value) or int(value) > MAX_BODY:
        return None
    return int(value)


def _after(query: str) -> int | None:
    """`after=N` of a /epochs query (absent: 0); None when N is not a plain number."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "after":
            return int(value) if _DIGITS.fullmatch(value) else None
    return 0


def _handler_class(
    metrics: TrainerMetrics,
    flag: StopFlag,
    token: bytes,
    rank: int,
    accept_stop: bool,
    request_timeout_s: float,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "stopline-trainer"
        timeout = request_timeout_s  # every read and write of the connection, head and body alike

        def parse_request(self) -> bool:
            parsed = super().parse_request()
            cast(_BoundedServer, self.server).head_received(self.connection)
            return parsed

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/metrics":
                self._send(HTTPStatus.OK, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/epochs":
                after = _after(query)
                if after is None:
                    self._json(
                        HTTPStatus.BAD_REQUEST, {"error": "after must be an epoch number: /epochs?after=12"}
                    )
                else:
                    self._send(HTTPStatus.OK, metrics.epochs.after(after), "application/json")
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/stop" or not accept_stop:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            if not self._authorized():
                self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
                return
            request = self._request_body()
            if request is None:
                error = f'need a Content-Length up to {MAX_BODY} and a body empty or JSON {{"reason": "..."}}'
                self._json(HTTPStatus.BAD_REQUEST, {"error": error})
                return
            if flag.request(*request):
                log.info("stop requested over HTTP: %s", flag.reason)
            self._json(HTTPStatus.ACCEPTED, {"stopping": True, "reason": flag.reason, "rank": rank})

        def _authorized(self) -> bool:
            if not token:  # no token configured: nobody may stop over HTTP, SIGTERM still works
                return False
            got = self.headers.get("Authorization", "").encode()
            return hmac.compare_digest(got, b"Bearer " + token)

        def _request_body(self) -> tuple[str, dict[str, str] | None] | None:
            """The reason and the operator's decision (`type`, `criterion`: kept only when well formed);
            None when the body is not an empty one or JSON {"reason": "..."}."""
            length = body_length(self.headers)
            if length is None:
                return None
            raw = self.rfile.read(length) if length else b""
            if not raw.strip():
                return DEFAULT_REASON, None
            try:
                body = json.loads(raw)
            except ValueError:
                return None
            if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
                return None
            return str(body.get("reason") or DEFAULT_REASON), clean_cause(
                body.get("type"), body.get("criterion")
            )

        def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode() + b"\n", "application/json")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
