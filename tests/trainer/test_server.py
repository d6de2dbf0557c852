"""The trainer's HTTP server under hostile clients: slowloris, hang-ups, bad Content-Length, huge reasons.

A real ControlServer on 127.0.0.1 with a short request timeout; raw sockets play the clients.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stopline_trainer import Config, Run
from stopline_trainer.control import MAX_REASON, StopFlag
from stopline_trainer.metrics import TrainerMetrics
from stopline_trainer.server import MAX_BODY, ControlServer

from .support import TOKEN, Endpoint, wait_until

pytestmark = pytest.mark.trainer

MAX_CONNECTIONS = 32
TIMEOUT_S = 1.5  # the server's per-read timeout, short for the test (10 s in a pod)
CLIENT_TIMEOUT_S = 10.0  # a client read that outlives this means the server hung on the request
HALF_HEAD = b"POST /stop HTTP/1.1\r\nHost: trainer\r\nAuthorization: Bearer "  # never finished


def handler_threads() -> int:
    """Threads the server started for connections (ThreadingMixIn names them after their target)."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


@pytest.fixture
def server() -> Iterator[tuple[ControlServer, StopFlag]]:
    flag = StopFlag()
    s = ControlServer(
        TrainerMetrics(flag),
        flag,
        token=TOKEN,
        bind_address="127.0.0.1",
        port=0,
        rank=0,
        request_timeout_s=TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
    )
    s.start()
    yield s, flag
    s.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S)


def closed_by_server(sock: socket.socket) -> bool:
    """The server hung up on this client (EOF or reset), without blocking to find out."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def status_of(port: int, request: bytes) -> int:
    """Send one raw request, return the status code of the answer."""
    with connect(port) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def post_stop(length_header: bytes, body: bytes = b"") -> bytes:
    head = b"POST /stop HTTP/1.1\r\nHost: trainer\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
    return head + length_header + b"\r\n" + body


def test_a_slowloris_holds_at_most_the_bound_and_a_real_stop_still_gets_through(
    server: tuple[ControlServer, StopFlag], capfd: pytest.CaptureFixture[str]
) -> None:
    s, flag = server
    most_threads = 0
    attackers: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = connect(s.port)
            sock.sendall(HALF_HEAD)
            attackers.append(sock)
            most_threads = max(most_threads, handler_threads())
        # every attacker was accepted: the ones beyond the bound were hung up on, the newest are held
        wait_until(
            lambda: sum(map(closed_by_server, attackers)) >= 200 - MAX_CONNECTIONS,
            "the server to drop the connections beyond its bound",
            on_fail=lambda: f"{handler_threads()} connection threads",
        )
        most_threads = max(most_threads, handler_threads())
        assert most_threads <= MAX_CONNECTIONS

        assert Endpoint(s.port).post_stop({"reason": "operator: patience"}) == (
            202,
            {"stopping": True, "reason": "operator: patience", "rank": 0},
        )
        assert flag.reason == "operator: patience"

        # the ones still held send nothing more: each is dropped once a read waited TIMEOUT_S
        wait_until(lambda: all(map(closed_by_server, attackers)), "every idle connection to be dropped")
        wait_until(lambda: handler_threads() == 0, "every connection's thread to end")
    finally:
        for sock in attackers:
            sock.close()
    assert "Traceback" not in capfd.readouterr().err


def test_clients_that_hang_up_leave_no_traceback(
    server: tuple[ControlServer, StopFlag], capfd: pytest.CaptureFixture[str]
) -> None:
    s, _ = server
    for _ in range(20):
        sock = connect(s.port)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: trainer\r\n\r\n" + HALF_HEAD)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset while the server answers
    wait_until(lambda: handler_threads() == 0, "every connection's thread to end")
    assert Endpoint(s.port).get("/healthz") == (200, b"ok\n")
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "length_header",
    [
        b"Content-Length: abc\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: +2\r\n",
        b"Content-Length: 1_0\r\n",
        b"Content-Length: 0x10\r\n",
        b"Content-Length: %d\r\n" % (MAX_BODY + 1),
        b"Content-Length: 99999999999999999999\r\n",
        b"Content-Length: 2\r\nContent-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
    ],
    ids=["not-a-number", "negative", "signed", "underscore", "hex", "over-max", "huge", "two", "chunked"],
)
def test_a_bad_content_length_gets_400_and_no_stop(
    server: tuple[ControlServer, StopFlag], length_header: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    s, flag = server
    assert status_of(s.port, post_stop(length_header, b"{}")) == 400
    assert not flag.is_set()
    assert "Traceback" not in capfd.readouterr().err


def test_no_content_length_is_an_empty_body(server: tuple[ControlServer, StopFlag]) -> None:
    """RFC 9112 6.3: a request with neither Content-Length nor Transfer-Encoding has no body."""
    s, flag = server
    assert status_of(s.port, post_stop(b"")) == 202
    assert flag.reason == "stop requested"


def test_the_reason_is_one_short_printable_line(
    server: tuple[ControlServer, StopFlag], caplog: pytest.LogCaptureFixture
) -> None:
    s, flag = server
    forged = "manual\n2026-12-01 INFO stopline: forged line \x1b[31m\u2028" + "x" * 48_000
    caplog.set_level(logging.INFO, logger="stopline_trainer")
    status, body = Endpoint(s.port).post_stop({"reason": forged})
    assert status == 202
    reason = body["reason"]
    assert reason == flag.reason
    assert len(reason) == MAX_REASON and reason.startswith("manual 2026-12-01 INFO stopline: forged line")
    assert reason.isprintable()
    logged = [r.getMessage() for r in caplog.records if "stop requested over HTTP" in r.getMessage()]
    assert len(logged) == 1 and logged[0].isprintable()


def test_a_body_that_is_not_a_reason_gets_400(server: tuple[ControlServer, StopFlag]) -> None:
    s, flag = server
    for body in (b"not json", b'["a"]', b'{"reason": 3}'):
        request = post_stop(b"Content-Length: %d\r\n" % len(body), body)
        assert status_of(s.port, request) == 400, body
    assert not flag.is_set()
    request = post_stop(b"Content-Length: 14\r\n", b'{"reason": ""}')
    assert status_of(s.port, request) == 202 and flag.reason == "stop requested"  # empty: the default


def test_a_run_closed_without_being_started_returns_and_frees_its_port(tmp_path: Path) -> None:
    run = Run(Config(metrics_port=0, bind_address="127.0.0.1", termination_log=tmp_path / "log"))
    port = run.server.port
    closing = threading.Thread(target=run.close, daemon=True)
    closing.start()
    closing.join(CLIENT_TIMEOUT_S)
    assert not closing.is_alive(), "close() hung"
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))
