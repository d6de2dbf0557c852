"""The operator's HEAD on an object store (CheckpointVerified) against raw servers on 127.0.0.1.

N2: a server that trickles its answer ends the verification at its deadline, and 40 such HEADs in one
namespace hold up neither another namespace's verification nor the loop's name lookups. N7: the HEAD goes
only where the operator lets it: never to link-local (cloud metadata), multicast or unspecified
addresses, to loopback only outside a pod or where the allow-list names it, to the address checked.

A real S3 server answers in tests/trainer/test_verify.py; here a test chooses what goes on the wire.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from itertools import cycle
from typing import Any, TypeVar

import pytest

from stopline.api import TrainingJobSpec, parse_spec
from stopline.lifecycle import Condition
from stopline.verify import verify_checkpoint

T = TypeVar("T")
Respond = Callable[[asyncio.StreamWriter, asyncio.Event], Awaitable[None]]

WEIGHTS_BYTES = 4096
POINTER = {"uri": "s3://ckpts/runs/a/ckpt-1.pt", "bytes": WEIGHTS_BYTES}
KEYS = {"AWS_ACCESS_KEY_ID": "AKIDTENANT", "AWS_SECRET_ACCESS_KEY": "tenant-secret"}
TRICKLE_EVERY_S = 2.0
ENDS_WITHIN_S = 30.0  # a trickle would go on for ever: the deadline (10 s) ends the HEAD well before this
UNDELAYED_WITHIN_S = 5.0  # another namespace's HEAD or a lookup: milliseconds; held, they never end
HOLDERS = 40


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class SecretsOnly:
    """Stand-in for the operator's Kube client: only the Secret read verify_checkpoint makes."""

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self.data = data or {}

    async def read_token(self, namespace: str, secret: str, key: str) -> str | None:
        return self.data.get(key)


def store_spec(endpoint: str, credentials: bool = False) -> TrainingJobSpec:
    store = {"uri": "s3://ckpts/runs/a", "endpoint": endpoint}
    if credentials:
        store["credentialsSecret"] = "s3"
    return parse_spec(
        {
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}},
            "objective": {"metric": "val_loss", "mode": "min"},
            "checkpoint": {"objectStore": store},
        }
    )


async def verified(
    endpoint: str, namespace: str = "tenant", pointer: Mapping[str, Any] = POINTER, credentials: bool = False
) -> Condition:
    kube = SecretsOnly(KEYS if credentials else None)
    condition = await verify_checkpoint(kube, namespace, store_spec(endpoint, credentials), pointer)  # type: ignore[arg-type]
    assert condition is not None and condition.type == "CheckpointVerified"
    return condition


@dataclass
class Store:
    endpoint: str
    port: int
    heads: list[bytes] = field(default_factory=list)  # the request line and headers of every request


@asynccontextmanager
async def object_store(respond: Respond) -> AsyncIterator[Store]:
    """A server on 127.0.0.1 that reads one request head per connection and lets `respond` answer. On the
    way out it tells every answer still going to stop, so no connection outlives the test."""
    closing = asyncio.Event()
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            served.heads.append(await reader.readuntil(b"\r\n\r\n"))
            await respond(writer, closing)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    listening = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    served = Store(f"http://127.0.0.1:{port}", port)
    try:
        yield served
    finally:
        closing.set()
        listening.close()
        await listening.wait_closed()
        await asyncio.wait_for(asyncio.gather(*handlers), ENDS_WITHIN_S)


def answer(status: str = "200 OK", length: int = WEIGHTS_BYTES) -> Respond:
    """What S3 answers a HEAD: the status line and the object's Content-Length, no body."""

    async def respond(writer: asyncio.StreamWriter, closing: asyncio.Event) -> None:
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode())

    return respond


async def trickle(writer: asyncio.StreamWriter, closing: asyncio.Event) -> None:
    """A 200 answer, one byte every 2 s, for as long as the test lasts: each read gets a byte well within
    any per-read timeout (botocore's is 5 s), and the headers never end."""
    for byte in cycle(b"HTTP/1.1 200 OK\r\nX-Padding: x\r\n"):
        writer.write(bytes([byte]))
        await writer.drain()
        with suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), TRICKLE_EVERY_S)
        if closing.is_set():
            return


async def timed(what: Awaitable[T], within_s: float) -> tuple[T | None, float]:
    """`what`'s result and the seconds it took; None and `within_s` when it had not ended by then."""
    started = time.monotonic()
    try:
        return await asyncio.wait_for(what, within_s), time.monotonic() - started
    except TimeoutError:
        return None, within_s


# -- the HEAD ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("credentials", [True, False], ids=["signed", "unsigned"])
def test_a_head_answered_with_the_size_verifies_the_checkpoint(credentials: bool) -> None:
    """Path-style, to the endpoint; signed with the TrainingJob's keys only when it names a Secret."""

    async def attempt() -> tuple[Condition, list[bytes]]:
        async with object_store(answer()) as store:
            return await verified(store.endpoint, credentials=credentials), store.heads

    condition, (head,) = run(attempt())
    assert (condition.status, condition.reason) == (True, "ObjectVerified")
    assert head.startswith(b"HEAD /ckpts/runs/a/ckpt-1.pt HTTP/1.1\r\n")
    signature = b"authorization: aws4-hmac-sha256 credential=akidtenant/"
    assert (signature in head.lower()) is credentials


@pytest.mark.parametrize(
    ("respond", "reason", "says"),
    [
        (answer(length=WEIGHTS_BYTES + 1), "SizeMismatch", "4097 bytes, the trainer's manifest says 4096"),
        (answer("404 Not Found", 0), "ObjectMissing", "does not exist"),
        (answer("403 Forbidden", 0), "Unchecked", "HTTP 403: access denied"),
        (answer("301 Moved Permanently", 0), "Unchecked", "HTTP 301 redirect, not followed"),
    ],
    ids=["size", "missing", "denied", "redirect"],
)
def test_what_the_head_answered_is_the_condition(respond: Respond, reason: str, says: str) -> None:
    async def attempt() -> Condition:
        async with object_store(respond) as store:
            return await verified(store.endpoint)

    condition = run(attempt())
    assert (condition.status, condition.reason) == (False, reason)
    assert says in condition.message, condition.message


def test_a_key_with_dot_segments_is_not_asked_for() -> None:
    """`runs/a/../../x` starts with the TrainingJob's prefix but names an object outside it."""

    async def attempt() -> tuple[Condition, list[bytes]]:
        async with object_store(answer()) as store:
            escaping = {"uri": "s3://ckpts/runs/a/../../other-tenant/ckpt.pt", "bytes": WEIGHTS_BYTES}
            return await verified(store.endpoint, pointer=escaping), store.heads

    condition, heads = run(attempt())
    assert (condition.status, condition.reason) == (False, "OutsideTarget")
    assert heads == []


# -- N2: a deadline, and no shared threads ------------------------------------------------------------------


def test_a_trickling_endpoint_is_unchecked_at_the_deadline() -> None:
    async def attempt() -> tuple[Condition | None, float]:
        async with object_store(trickle) as store:
            return await timed(verified(store.endpoint), ENDS_WITHIN_S)

    condition, took = run(attempt())
    assert condition is not None, f"the HEAD of a trickling endpoint still ran after {ENDS_WITHIN_S:g} s"
    assert (condition.status, condition.reason) == (False, "Unchecked")
    assert "timed out" in condition.message, condition.message
    print(f"\ntrickling endpoint: Unchecked after {took:.1f} s")


def test_trickling_heads_of_one_namespace_hold_up_neither_another_namespace_nor_lookups() -> None:
    """40 HEADs of namespace `attacker` trickle; namespace `victim`'s HEAD and the loop's getaddrinfo
    (aiohttp's resolver for every host name the operator reads) end in milliseconds all the same."""

    async def attempt() -> tuple[tuple[Condition | None, float], tuple[object, float]]:
        async with object_store(trickle) as attacker, object_store(answer()) as victim:
            holding = [asyncio.create_task(verified(attacker.endpoint, "attacker")) for _ in range(HOLDERS)]
            await asyncio.sleep(1.0)  # every HEAD that can be held connects and is held
            other = await timed(verified(victim.endpoint, "victim"), UNDELAYED_WITHIN_S)
            lookup = await timed(asyncio.get_running_loop().getaddrinfo("localhost", 80), UNDELAYED_WITHIN_S)
            for task in holding:
                task.cancel()
            await asyncio.gather(*holding, return_exceptions=True)
        return other, lookup

    (condition, other_took), (addresses, lookup_took) = run(attempt())
    print(
        f"\nwith {HOLDERS} trickling HEADs: victim's HEAD {other_took:.3f} s, getaddrinfo {lookup_took:.3f} s"
    )
    assert condition is not None, f"the victim's verification had not ended after {UNDELAYED_WITHIN_S:g} s"
    assert condition.reason == "ObjectVerified", condition.message
    assert addresses is not None, f"getaddrinfo had not ended after {UNDELAYED_WITHIN_S:g} s"


@dataclass
class SilentDNS:
    name: str
    released: threading.Event


@pytest.fixture
def dns_that_never_answers(monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentDNS]:
    """A fake: a DNS server that never answers cannot be set up on loopback without changing this machine's
    resolver, so socket.getaddrinfo blocks for one name until released and resolves all others."""
    silent = SilentDNS("never.answers.test", threading.Event())
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == silent.name:
            silent.released.wait(ENDS_WITHIN_S)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield silent
    silent.released.set()


def test_slow_lookups_of_one_namespace_hold_up_neither_another_namespace_nor_lookups(
    dns_that_never_answers: SilentDNS,
) -> None:
    """The endpoint's name is looked up on threads: 40 names of namespace `attacker` whose DNS server never
    answers hold at most a few of them, and none of the loop's."""

    async def attempt() -> tuple[tuple[Condition | None, float], tuple[object, float]]:
        async with object_store(answer()) as victim:
            slow_endpoint = f"http://{dns_that_never_answers.name}:9000"
            holding = [asyncio.create_task(verified(slow_endpoint, "attacker")) for _ in range(HOLDERS)]
            await asyncio.sleep(0.5)
            other = await timed(verified(f"http://localhost:{victim.port}", "victim"), UNDELAYED_WITHIN_S)
            lookup = await timed(asyncio.get_running_loop().getaddrinfo("localhost", 80), UNDELAYED_WITHIN_S)
            dns_that_never_answers.released.set()  # threads held in lookups end before the loop does
            for task in holding:
                task.cancel()
            await asyncio.gather(*holding, return_exceptions=True)
        return other, lookup

    (condition, other_took), (addresses, lookup_took) = run(attempt())
    print(f"\n{HOLDERS} lookups held: victim's HEAD {other_took:.3f} s, getaddrinfo {lookup_took:.3f} s")
    assert condition is not None, f"the victim's verification had not ended after {UNDELAYED_WITHIN_S:g} s"
    assert condition.reason == "ObjectVerified", condition.message
    assert addresses is not None, f"getaddrinfo had not ended after {UNDELAYED_WITHIN_S:g} s"


# -- N7: where the HEAD may go ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254",
        "http://169.254.169.254:80/latest/meta-data",
        "http://[::ffff:169.254.169.254]",
        "http://[fe80::1]:9000",
        "http://2852039166",  # a name getaddrinfo resolves to 169.254.169.254, as curl and boto3 do
        "http://0251.0376.0251.0376",  # the same, in octal
        "http://[fd00:ec2::254]",
        "http://100.100.100.200",
        "http://224.0.0.251:5353",
        "http://0.0.0.0:9000",
        "http://[::]:9000",
    ],
)
def test_metadata_link_local_multicast_and_unspecified_addresses_are_refused(endpoint: str) -> None:
    condition, _ = run(timed(verified(endpoint), UNDELAYED_WITHIN_S))
    assert condition is not None, f"no refusal within {UNDELAYED_WITHIN_S:g} s"
    assert (condition.status, condition.reason) == (False, "Unchecked")
    assert "spec.checkpoint.objectStore.endpoint" in condition.message, condition.message
    assert "refused" in condition.message, condition.message


def test_loopback_is_refused_in_a_pod_unless_the_allow_list_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pod, loopback is the operator's own; outside one (this test, a developer) it is allowed."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")

    async def attempt() -> tuple[list[Condition], list[bytes]]:
        async with object_store(answer()) as store:
            refused = [await verified(store.endpoint), await verified(f"http://localhost:{store.port}")]
            monkeypatch.setenv("STOPLINE_OBJECT_STORE_HOSTS", f"127.0.0.1:{store.port}")
            return [*refused, await verified(store.endpoint)], store.heads

    (literal, name, allowed), heads = run(attempt())
    for refused in (literal, name):
        assert (refused.status, refused.reason) == (False, "Unchecked")
        assert "spec.checkpoint.objectStore.endpoint refused" in refused.message, refused.message
        assert "loopback" in refused.message, refused.message
    assert allowed.reason == "ObjectVerified", allowed.message
    assert len(heads) == 1


@pytest.mark.parametrize(
    ("allowed_hosts", "endpoint_host", "verified_there"),
    [
        ("s3.example.com, *.store.test:9000", "127.0.0.1", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1:{port}", "127.0.0.1", True),
        ("127.0.0.1:1", "127.0.0.1", False),
        ("localhost:{port}", "localhost", True),
        ("localhost:{port}", "127.0.0.1", False),  # the names written are matched, not what they resolve to
        ("*.localhost", "localhost", False),
        ("127.0.0.1:http", "127.0.0.1", False),  # a typo narrows the list, never lifts it
        ("", "127.0.0.1", True),  # unset: any host not refused
    ],
)
def test_the_allow_list_lets_the_head_go_only_to_the_hosts_it_names(
    monkeypatch: pytest.MonkeyPatch, allowed_hosts: str, endpoint_host: str, verified_there: bool
) -> None:
    async def attempt() -> tuple[Condition, list[bytes]]:
        async with object_store(answer()) as store:
            monkeypatch.setenv("STOPLINE_OBJECT_STORE_HOSTS", allowed_hosts.format(port=store.port))
            return await verified(f"http://{endpoint_host}:{store.port}"), store.heads

    condition, heads = run(attempt())
    if verified_there:
        assert condition.reason == "ObjectVerified", condition.message
    else:
        assert (condition.reason, heads) == ("Unchecked", [])
        assert "not in STOPLINE_OBJECT_STORE_HOSTS" in condition.message, condition.message


def test_the_head_goes_to_the_address_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake DNS that rebinds (loopback first, the metadata address after): the name is looked up once
    and the connection goes to that answer. A guard on the design: the old boto3 HEAD checked nothing, so
    had nothing to rebind around."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebinding.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        return real("127.0.0.1" if len(lookups) == 1 else "169.254.169.254", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)

    async def attempt() -> tuple[Condition, list[bytes]]:
        async with object_store(answer()) as store:
            return await verified(f"http://rebinding.test:{store.port}"), store.heads

    condition, heads = run(attempt())
    assert condition.reason == "ObjectVerified", condition.message
    assert len(heads) == 1 and b"host: rebinding.test:" in heads[0].lower()
    assert lookups == ["rebinding.test"]
