"""The operator's reads of a pod's /metrics and of Prometheus, against hostile servers on 127.0.0.1 (and ::1).

Each server is a raw asyncio server, so a test chooses exactly what goes on the wire: a body in two writes,
a body that never ends, a redirect, a gzip bomb, a Content-Length that lies.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pytest

from stopline.metrics import prometheus
from stopline.metrics.http import (
    EXCERPT_CHARS,
    MESSAGE_CHARS,
    QUERY_MAX_BYTES,
    SCRAPE_MAX_BYTES,
    client_session,
    endpoint_url,
    excerpt,
)
from stopline.metrics.scrape import ScrapeError, scrape
from stopline_trainer.control import StopFlag
from stopline_trainer.metrics import TrainerMetrics

Respond = Callable[[asyncio.StreamWriter], Awaitable[None]]
T = TypeVar("T")
TIMEOUT_S = 5.0
HANDLERS_END_WITHIN_S = 5.0
TRAINER_TEXT = b'stopline_epoch 3\nstopline_step 300\nstopline_metric{name="val_loss"} 0.123456\n'


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@dataclass
class Served:
    url: str
    heads: list[bytes] = field(default_factory=list)  # the request line and headers of every request


@asynccontextmanager
async def server(respond: Respond, host: str = "127.0.0.1") -> AsyncIterator[Served]:
    """A server that reads one request head per connection, then lets `respond` write the answer."""
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            served.heads.append(await reader.readuntil(b"\r\n\r\n"))
            await respond(writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    listening = await asyncio.start_server(handle, host, 0)
    port = listening.sockets[0].getsockname()[1]
    served = Served(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    try:
        yield served
    finally:
        listening.close()
        await listening.wait_closed()
        # Each handler ends once its client has gone: an endless body's next write fails.
        await asyncio.wait_for(asyncio.gather(*handlers), HANDLERS_END_WITHIN_S)


def head(status: str = "200 OK", headers: Mapping[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def whole(body: bytes, status: str = "200 OK", headers: Mapping[str, str] | None = None) -> Respond:
    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(head(status, {"Content-Length": str(len(body)), **(headers or {})}) + body)

    return respond


def prometheus_answer(body: object, status: str = "200 OK") -> Respond:
    return whole(json.dumps(body).encode(), status, {"Content-Type": "application/json"})


def vector(*items: object) -> dict[str, object]:
    return {"status": "success", "data": {"resultType": "vector", "result": list(items)}}


def series(series_name: str, value: object, job: str, **labels: str) -> dict[str, object]:
    metric = {"__name__": series_name, "namespace": "ns", "stopline_job": job, "rank": "0", **labels}
    return {"metric": metric, "value": [1712345678.1, value]}


async def scraped(respond: Respond, session: aiohttp.ClientSession | None = None) -> Any:
    """What scrape() returns, or the ScrapeError it raises (as the exception)."""
    async with server(respond) as served, session or client_session() as client:
        try:
            return await scrape(client, f"{served.url}/metrics", TIMEOUT_S)
        except ScrapeError as error:
            return error


async def queried(respond: Respond, session: aiohttp.ClientSession | None = None) -> Any:
    """What instant_query() returns, or the PrometheusError it raises (as the exception)."""
    async with server(respond) as served, session or client_session() as client:
        try:
            return await prometheus.instant_query(client, served.url, "up", TIMEOUT_S)
        except prometheus.PrometheusError as error:
            return error


def assert_bounded(message: str) -> None:
    assert len(message) <= MESSAGE_CHARS
    assert all(" " <= c <= "~" for c in message), message


# -- whole bodies, or none ----------------------------------------------------------------------------


def test_a_body_written_in_two_writes_is_read_whole() -> None:
    """The review's H5: the old read took the first buffered chunk, so 0.123456 came back as 0.1."""

    async def in_two_writes(writer: asyncio.StreamWriter) -> None:
        writer.write(head(headers={"Content-Length": str(len(TRAINER_TEXT))}) + TRAINER_TEXT[:-6])
        await writer.drain()
        await asyncio.sleep(0.2)  # the pause is the fault under test: the rest arrives later
        writer.write(TRAINER_TEXT[-6:])

    report = run(scraped(in_two_writes))
    assert report.metrics == {"val_loss": 0.123456}


def test_a_large_trainer_exposition_is_read_whole() -> None:
    """3,000 metrics (~200 KB), as the real trainer library writes them, in 16 KiB writes."""
    trainer = TrainerMetrics(StopFlag())
    trainer.observe(9, 900, {f"metric_{i}": i + 0.123456 for i in range(3000)})
    text = trainer.exposition()

    async def in_pieces(writer: asyncio.StreamWriter) -> None:
        writer.write(head(headers={"Content-Length": str(len(text))}))
        for start in range(0, len(text), 16 << 10):
            writer.write(text[start : start + (16 << 10)])
            await writer.drain()

    report = run(scraped(in_pieces))
    assert len(report.metrics) == 3000 and report.metrics["metric_2999"] == 2999.123456


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_scrape_over_1_mib_is_an_error_not_a_prefix(declared: bool) -> None:
    """The first KiB is a valid trainer scrape; what follows is comments past the cap."""
    body = TRAINER_TEXT + b"# padding\n" * (SCRAPE_MAX_BYTES // 10)
    if declared:
        respond = whole(body)
    else:

        async def respond(writer: asyncio.StreamWriter) -> None:
            writer.write(head(headers={"Transfer-Encoding": "chunked"}))
            for start in range(0, len(body), 1 << 16):
                piece = body[start : start + (1 << 16)]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")

    error = run(scraped(respond))
    assert isinstance(error, ScrapeError)
    assert "over 1 MiB" in str(error)


def test_a_prometheus_answer_over_8_mib_is_an_error() -> None:
    body = json.dumps(vector(series("stopline_epoch", "1", "a"))).encode()
    error = run(queried(whole(body + b" " * (QUERY_MAX_BYTES - len(body) + 1))))
    assert isinstance(error, prometheus.PrometheusError)
    assert "over 8 MiB" in str(error)


def test_a_body_shorter_than_its_content_length_is_an_error() -> None:
    async def cut_short(writer: asyncio.StreamWriter) -> None:
        writer.write(head(headers={"Content-Length": str(len(TRAINER_TEXT) + 100)}) + TRAINER_TEXT)

    error = run(scraped(cut_short))
    assert isinstance(error, ScrapeError)
    assert "body cut short" in str(error)


def test_a_body_that_never_ends_is_an_error_within_the_timeout() -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(head(headers={"Transfer-Encoding": "chunked"}))
        while True:
            writer.write(b"1\r\n#\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    async def read() -> tuple[object, float]:
        async with server(trickle) as served, client_session() as client:
            started = time.monotonic()
            try:
                await scrape(client, f"{served.url}/metrics", 0.5)
            except ScrapeError as error:
                return error, time.monotonic() - started
            return None, time.monotonic() - started

    error, took = run(read())
    assert isinstance(error, ScrapeError)
    assert "no whole answer within 0.5 s" in str(error)
    assert took < 3


# -- redirects and encodings ----------------------------------------------------------------------------


@pytest.mark.parametrize("read", ["scrape", "query"])
def test_a_redirect_is_refused_and_not_followed(read: str) -> None:
    async def attempt() -> tuple[Exception, list[bytes]]:
        async with server(whole(TRAINER_TEXT)) as target:
            redirect = whole(b"", "307 Temporary Redirect", {"Location": f"{target.url}/elsewhere"})
            outcome = await (scraped(redirect) if read == "scrape" else queried(redirect))
            return outcome, target.heads

    error, reached = run(attempt())
    assert isinstance(error, ScrapeError | prometheus.PrometheusError)
    assert "HTTP 307 redirect refused" in str(error)
    assert reached == []


def gzip_bomb() -> bytes:
    """47 KiB that inflate to a 48 MiB Prometheus error answer."""
    inflated = b'{"status":"error","errorType":"bad_data","error":"' + b"A" * (48 << 20) + b'"}'
    return gzip.compress(inflated, compresslevel=9)


@pytest.mark.parametrize("decompressing", [False, True], ids=["client_session", "aiohttp-default-session"])
def test_a_gzip_answer_is_refused_without_inflating_it(decompressing: bool) -> None:
    """Sent whatever the request asked for; refused even on a session that would decompress it."""
    bomb = gzip_bomb()
    respond = whole(bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    async def attempt() -> tuple[Exception, int, list[bytes]]:
        async with server(respond) as served:
            session = aiohttp.ClientSession() if decompressing else client_session()
            tracemalloc.start()
            try:
                async with session:
                    await prometheus.instant_query(session, served.url, "up", TIMEOUT_S)
            except prometheus.PrometheusError as error:
                return error, tracemalloc.get_traced_memory()[1], served.heads
            finally:
                tracemalloc.stop()
            raise AssertionError("the gzip answer was accepted")

    error, peak, heads = run(attempt())
    assert "Content-Encoding 'gzip' refused" in str(error)
    assert peak < 4 << 20, f"peak {peak >> 20} MiB while refusing a {len(bomb) >> 10} KiB gzip body"
    assert b"accept-encoding: identity" in heads[0].lower()


# -- what a scrape's text may say -------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", ["NaN", "+Inf", "1e300"])
def test_a_scraped_epoch_that_is_no_position_is_a_scrape_error(epoch: str) -> None:
    error = run(scraped(whole(f"stopline_epoch {epoch}\nstopline_step 1\n".encode())))
    assert isinstance(error, ScrapeError)
    assert "stopline_epoch is" in str(error)


def test_what_a_pod_serves_shows_only_as_an_excerpt() -> None:
    error = run(scraped(whole(b"DB_PASSWORD=hunter2\r\n" + b"B" * 50_000 + b"\n")))
    assert isinstance(error, ScrapeError)
    assert_bounded(str(error))
    assert str(error).count("B") <= EXCERPT_CHARS


# -- what a Prometheus answer may say ----------------------------------------------------------------------


def test_one_bad_series_leaves_the_other_jobs_reports() -> None:
    """H1: a NaN epoch, a series without a value, labels or values of the wrong type, items that are not
    series: each job with one loses its report; job `good` keeps its own."""
    answer = vector(
        series("stopline_epoch", "3", "good"),
        series("stopline_step", "300", "good"),
        series("stopline_metric", "0.25", "good", name="val_loss"),
        series("stopline_epoch", "NaN", "nan"),
        series("stopline_step", "10", "nan"),
        {"metric": {"__name__": "stopline_epoch", "namespace": "ns", "stopline_job": "novalue"}},
        series("stopline_step", "10", "novalue"),
        series("stopline_epoch", 3, "number"),  # the API writes values as strings
        series("stopline_step", "10", "number"),
        {"metric": {"__name__": "stopline_epoch", "namespace": "ns", "stopline_job": "types", "rank": 0}},
        series("stopline_step", "10", "types"),
        {"metric": ["stopline_epoch"], "value": [1, "1"]},
        {"metric": {}, "value": [1]},
        42,
        None,
        "stopline_epoch",
    )
    samples = run(queried(prometheus_answer(answer)))
    assert isinstance(samples, list)
    found = prometheus.reports(samples)
    assert set(found) == {("ns", "good")}
    assert (found[("ns", "good")].epoch, found[("ns", "good")].metrics) == (3, {"val_loss": 0.25})


@pytest.mark.parametrize(
    ("respond", "problem"),
    [
        (whole(b"<html>502 Bad Gateway</html>", "502 Bad Gateway"), "HTTP 502, not a Prometheus API answer"),
        (whole(b"[" * 200_000), "HTTP 200, not a Prometheus API answer"),
        (whole(b"1" * 10_000), "HTTP 200, not a Prometheus API answer"),
        (prometheus_answer(["success"]), "HTTP 200, not a Prometheus API answer"),
        (prometheus_answer({"status": "success"}), "no data.result in the answer"),
        (
            prometheus_answer({"status": "success", "data": {"resultType": "vector", "result": {}}}),
            "no data.result in the answer",
        ),
        (
            prometheus_answer({"status": "success", "data": {"resultType": "scalar", "result": [1, 2]}}),
            "no data.result in the answer",
        ),
        (whole(b"", "404 Not Found"), "HTTP 404, not a Prometheus API answer"),
    ],
    ids=["html", "deep-nesting", "huge-integer", "list", "no-data", "result-not-list", "bad-scalar", "404"],
)
def test_an_answer_that_is_not_a_query_result_is_a_prometheus_error(respond: Respond, problem: str) -> None:
    error = run(queried(respond))
    assert isinstance(error, prometheus.PrometheusError)
    assert problem in str(error)
    assert_bounded(str(error))


def test_an_answer_of_tiny_values_under_the_cap_is_refused_before_parsing() -> None:
    """8 MiB of `{},` would be 2.8 million dicts, 227 MiB once parsed: refused from a count of its values."""
    head_, tail = b'{"status":"success","data":{"resultType":"vector","result":[', b"{}]}}"
    body = head_ + b"{}," * ((QUERY_MAX_BYTES - 100) // 3) + tail

    async def attempt() -> tuple[object, int]:
        tracemalloc.start()
        try:
            return await queried(whole(body)), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    error, peak = run(attempt())
    assert isinstance(error, prometheus.PrometheusError)
    assert f"answer of over {prometheus.MAX_JSON_VALUES} JSON values refused" in str(error)
    assert peak < 40 << 20, f"peak {peak >> 20} MiB"


def test_the_answer_for_thousands_of_jobs_is_read() -> None:
    """20,000 series with a PodMonitor's labels (~2,500 jobs): well within both bounds."""
    labels = {"container": "trainer", "endpoint": "stopline", "instance": "10.1.2.3:8000", "service": "x"}
    answer = vector(
        *(series("stopline_epoch", "1", f"job-{i}", pod=f"job-{i}-0", **labels) for i in range(20_000))
    )
    samples = run(queried(prometheus_answer(answer)))
    assert isinstance(samples, list) and len(samples) == 20_000


def test_a_50_kb_error_text_is_reflected_only_as_an_excerpt() -> None:
    """Status and Events show what Prometheus said, never more than an excerpt of it."""
    answer = {"status": "error", "errorType": "bad_data", "error": "db_password=hunter2\n" + "A" * 50_000}
    error = run(queried(prometheus_answer(answer, "400 Bad Request")))
    assert isinstance(error, prometheus.PrometheusError)
    assert "query 'up' failed (HTTP 400 bad_data): db_password=hunter2 AAA" in str(error)
    assert_bounded(str(error))
    assert str(error).count("A") <= EXCERPT_CHARS


@pytest.mark.parametrize("path", ["/prom", "/prom/", "/prom?x=/latest/meta-data#"])
def test_the_query_goes_to_the_api_path_under_the_servers_path(path: str) -> None:
    """M2: a query in the base URL (refused by the spec parser too) never becomes the request's path."""

    async def ask() -> list[bytes]:
        async with server(prometheus_answer(vector())) as served, client_session() as client:
            assert await prometheus.instant_query(client, f"{served.url}{path}", "up", TIMEOUT_S) == []
            return served.heads

    (request,) = run(ask())
    assert request.startswith(b"GET /prom/api/v1/query?query=up HTTP/1.1\r\n")


# -- what a failure may say about the other end -----------------------------------------------------------

NO_ANSWER_WITHIN_S = 0.5


def unused_port() -> int:
    """A port on 127.0.0.1 where nothing listens: bound, then let go."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@asynccontextmanager
async def nothing_at(host: str) -> AsyncIterator[Served]:
    yield Served(f"http://{host}")


async def silent(writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(2 * NO_ANSWER_WITHIN_S)  # the request was read; no answer comes before the timeout


async def hangs_up(writer: asyncio.StreamWriter) -> None:
    """The connection closes without an answer."""


def speaks(banner: bytes) -> Respond:
    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(banner)

    return respond


OTHER_ENDS: dict[str, Callable[[], AbstractAsyncContextManager[Served]]] = {
    "nothing-listening": lambda: nothing_at(f"127.0.0.1:{unused_port()}"),
    "no-such-name": lambda: nothing_at("nothing.invalid"),
    "silent": lambda: server(silent),
    "hangs-up": lambda: server(hangs_up),
    "ssh": lambda: server(speaks(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n")),
    "redis": lambda: server(speaks(b"-ERR unknown command 'GET', with args beginning with: '/metrics'\r\n")),
}


async def unanswered(other_end: str) -> str:
    """What a scrape of `other_end` says after its URL."""
    async with OTHER_ENDS[other_end]() as served, client_session() as client:
        url = f"{served.url}/metrics"
        try:
            await scrape(client, url, NO_ANSWER_WITHIN_S)
        except ScrapeError as error:
            return str(error).removeprefix(f"GET {url}: ")
    raise AssertionError(f"{other_end} answered a scrape")


def test_whatever_did_not_answer_reads_the_same() -> None:
    """M2: the TrainingJob's author picks the host and port, so the message must not tell a closed port from a
    silent one, a name from none, or HTTP from SSH or Redis: one phrase, nothing of the exception or of the
    bytes that came."""
    problems = {other_end: run(unanswered(other_end)) for other_end in OTHER_ENDS}
    assert len(set(problems.values())) == 1, problems
    problem = problems["ssh"]
    assert problem.startswith("no HTTP answer within 0.5 s"), problem
    for telling in ("Error", "Errno", "SSH", "OpenSSH", "ERR", "unknown command", "Connect call failed"):
        assert telling not in problem, problem


def test_the_status_of_an_answer_that_came_is_shown() -> None:
    """What a user needs to fix the URL: the status, and what went wrong after it; not the server's text."""

    async def cut_short(writer: asyncio.StreamWriter) -> None:
        writer.write(head(headers={"Content-Length": "100"}) + b"secret-token=abc")

    error = run(scraped(cut_short))
    assert isinstance(error, ScrapeError)
    assert str(error).endswith("/metrics: HTTP 200, body cut short or malformed"), str(error)
    not_found = run(scraped(whole(b"no such page: secret-token=abc", "404 Not Found")))
    assert str(not_found).endswith("/metrics: HTTP 404"), str(not_found)


# -- pod addresses and excerpts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "url"),
    [
        ("10.1.2.3", "http://10.1.2.3:8000/metrics"),
        ("fd00::1", "http://[fd00::1]:8000/metrics"),
        ("fd00:0:0:0:0:0:0:1", "http://[fd00::1]:8000/metrics"),
        ("::ffff:10.1.2.3", "http://[::ffff:a01:203]:8000/metrics"),
    ],
)
def test_a_pod_endpoint_brackets_ipv6(ip: str, url: str) -> None:
    assert endpoint_url(ip, 8000, "/metrics") == url


@pytest.mark.parametrize(
    ("ip", "port", "path"),
    [
        ("pod.example", 8000, "/metrics"),
        ("10.1.2.3:80", 8000, "/metrics"),
        ("[fd00::1]", 8000, "/metrics"),
        ("fe80::1%eth0", 8000, "/metrics"),
        ("", 8000, "/metrics"),
        ("10.1.2.3", 0, "/metrics"),
        ("10.1.2.3", 8000, "@evil.example/metrics"),
    ],
)
def test_a_pod_endpoint_is_refused_for_what_is_not_an_ip_port_and_path(ip: str, port: int, path: str) -> None:
    with pytest.raises(ValueError):
        endpoint_url(ip, port, path)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine cannot bind ::1")
def test_a_pod_on_ipv6_is_scraped() -> None:
    """M9: an IPv6 pod IP makes a URL aiohttp can request."""

    async def scrape_ipv6() -> Any:
        async with server(whole(TRAINER_TEXT), host="::1") as served, client_session() as client:
            port = int(served.url.rsplit(":", 1)[1])
            return await scrape(client, endpoint_url("::1", port, "/metrics"), TIMEOUT_S)

    assert run(scrape_ipv6()).epoch == 3


def test_an_excerpt_is_short_printable_ascii() -> None:
    assert excerpt("line one\nline\ttwo\x00\x1b[2J\u202eé") == "line one line two??[2J??"
    assert excerpt("x" * 1000, 20) == "x" * 17 + "..."
    assert len(excerpt("y" * 1000)) == EXCERPT_CHARS
    assert excerpt("short") == "short"
