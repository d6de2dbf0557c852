"""The pod's HTTP endpoint: /metrics for the operator's scrape, /healthz, and the authenticated POST /stop."""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from .control import StopFlag
from .metrics import TrainerMetrics

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024


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
    ) -> None:
        handler = _handler_class(metrics, flag, token.encode(), rank, accept_stop)
        server_class = _IPv6Server if ":" in bind_address else ThreadingHTTPServer
        self._httpd = server_class((bind_address, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="stopline-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _IPv6Server(ThreadingHTTPServer):
    """For a bind address like "::" on IPv6-only clusters."""

    address_family = socket.AF_INET6


def _handler_class(
    metrics: TrainerMetrics, flag: StopFlag, token: bytes, rank: int, accept_stop: bool
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "stopline-trainer"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(HTTPStatus.OK, metrics.exposition(), CONTENT_TYPE_LATEST)
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
            reason = self._reason()
            if reason is None:
                self._json(HTTPStatus.BAD_REQUEST, {"error": 'body must be empty or JSON {"reason": "..."}'})
                return
            if flag.request(reason):
                log.info("stop requested over HTTP: %s", reason)
            self._json(HTTPStatus.ACCEPTED, {"stopping": True, "reason": flag.reason, "rank": rank})

        def _authorized(self) -> bool:
            if not token:  # no token configured: nobody may stop over HTTP, SIGTERM still works
                return False
            got = self.headers.get("Authorization", "").encode()
            return hmac.compare_digest(got, b"Bearer " + token)

        def _reason(self) -> str | None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return None
            raw = self.rfile.read(length) if length else b""
            if not raw.strip():
                return "stop requested"
            try:
                body = json.loads(raw)
            except ValueError:
                return None
            if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
                return None
            return str(body.get("reason") or "stop requested")

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
