"""The one way the operator reads a remote HTTP body (a pod's /metrics, Prometheus' /api/v1/query).

Whoever can create a TrainingJob chooses the server at the other end, so every answer is hostile input:
a body is read to its end under a byte cap and refused whole when it is larger or cut short (never used as
a prefix), redirects are refused, compressed bodies are refused (no decompression bomb), and remote text
reaches a message only as a short, sanitized excerpt.

The author of a TrainingJob can also name any host and port, so a failure says no more than a user needs
to fix the URL: the HTTP status of an answer that came, or one fixed phrase (`no_answer`) for every way an
answer did not come. The exception's class and text would tell refused from silent ports, a DNS name from
none and SSH from Redis: a port scan of whatever the operator can reach.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

SCRAPE_MAX_BYTES = 1 << 20  # a trainer's exposition is a few KiB
QUERY_MAX_BYTES = 8 << 20  # the trainer query of ~10,000 jobs fits in a few MiB
EXCERPT_CHARS = 120  # remote text in a message
MESSAGE_CHARS = 300  # a whole message built from a remote answer
CONNECTIONS = 256
_READ_CHUNK = 64 << 10
_IDENTITY = {"Accept-Encoding": "identity"}
_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH})  # no host answers at that address


def no_answer(within_s: float) -> str:
    """The one message for a request that got no HTTP answer, whatever the reason."""
    return (
        f"no HTTP answer within {within_s:g} s: the name does not resolve, the connection is refused, "
        "reset or times out, TLS fails, or the server does not speak HTTP"
    )


class FetchError(RuntimeError):
    """The body could not be read whole; the message names the URL and what to check. `silent`: nothing
    answered at all within the time (a timeout before any status line, or a host that is unreachable),
    as from a frozen process or a lost node; a refused connection is not silence: nothing listens there."""

    def __init__(self, text: str, silent: bool = False) -> None:
        super().__init__(text)
        self.silent = silent


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def client_session() -> aiohttp.ClientSession:
    """The session for reads of pods and Prometheus: no automatic decompression, so a gzip body is never
    inflated; `fetch` refuses one anyway, whatever session it is given."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS), auto_decompress=False)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters of `text` as printable ASCII: whitespace becomes a space, any other
    character outside printable ASCII a `?`, and a cut shows as `...`. Safe for a status message, an
    Event and a log line."""
    cut = len(text) > limit
    head = text[: limit - 3 if cut else limit]
    clean = "".join(c if " " <= c <= "~" else " " if c.isspace() else "?" for c in head)
    return clean + "..." if cut else clean


def message(where: str, problem: str) -> str:
    """`where: problem`, bounded: `where` (a URL from the spec) to an excerpt, the whole to MESSAGE_CHARS."""
    return excerpt(f"{excerpt(where)}: {problem}", MESSAGE_CHARS)


def endpoint_url(ip: str, port: int, path: str) -> str:
    """`http://ip:port/path` for a pod IP, IPv6 in brackets (`http://[fd00::1]:8000/metrics`).

    Raises ValueError when `ip` is not an IP literal (a name, or an IPv6 address with a zone), `port` is
    not within 1..65535 or `path` does not start with `/`: the URL would go somewhere other than the pod.
    """
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"a pod IP has no zone: {ip!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be within 1..65535, got {port}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{port}{path}"


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"


def _refusal(status: int, headers: CIMultiDictProxy[str], limit: int) -> str | None:
    """Why an answer is refused before its body is read, from its status line and headers."""
    if 300 <= status < 400:
        return f"HTTP {status} redirect refused: set the URL the server redirects to"
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"Content-Encoding {excerpt(encoding, 20)!r} refused: the operator reads only identity"
    length = headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        return f"body of {length} bytes is over {_size(limit)}"
    return None


async def _read(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None when it is over `limit`. A body cut short of its Content-Length or its last
    chunk raises aiohttp's ClientPayloadError."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _unanswered(status: int | None, timed_out: bool, timeout_s: float) -> str:
    """What a request that failed says: the fixed phrase until a status line came, then the status and
    what went wrong after it, never the exception's text."""
    if status is None:
        return no_answer(timeout_s)
    if timed_out:
        return f"HTTP {status}, no whole answer within {timeout_s:g} s"
    return f"HTTP {status}, body cut short or malformed"


async def fetch(
    session: aiohttp.ClientSession,
    url: str | URL,
    *,
    limit: int,
    timeout_s: float,
    params: dict[str, str] | None = None,
) -> Answer:
    """GET `url` and read its whole body, at most `limit` bytes, within `timeout_s` for everything.
    Raises FetchError for no answer, a redirect, a compressed body, or a body over `limit` or cut short."""
    where = f"GET {url}"
    status: int | None = None  # set once an answer's status line came
    try:
        async with session.get(
            url,
            params=params,
            headers=_IDENTITY,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            status = response.status
            refusal = _refusal(response.status, response.headers, limit)
            if refusal is not None:
                raise FetchError(message(where, refusal))
            body = await _read(response, limit)
    except aiohttp.InvalidURL:
        raise FetchError(message(where, "not a URL the operator can request")) from None
    except TimeoutError:
        raise FetchError(
            message(where, _unanswered(status, True, timeout_s)), silent=status is None
        ) from None
    except (aiohttp.ClientError, ValueError, OSError) as error:
        unreachable = isinstance(error, aiohttp.ClientConnectorError) and error.os_error.errno in _UNREACHABLE
        text = message(where, _unanswered(status, False, timeout_s))
        raise FetchError(text, silent=status is None and unreachable) from None
    if body is None:
        raise FetchError(message(where, f"body over {_size(limit)}"))
    return Answer(response.status, body)


async def fetch_ok(session: aiohttp.ClientSession, url: str, *, limit: int, timeout_s: float) -> bytes:
    """`fetch`, and the body only from a 200: any other status is a FetchError naming it."""
    answer = await fetch(session, url, limit=limit, timeout_s=timeout_s)
    if answer.status != 200:
        raise FetchError(message(f"GET {url}", f"HTTP {answer.status}"))
    return answer.body
