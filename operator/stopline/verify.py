"""Whether the weights a checkpoint pointer names are there, with the size it says: HEAD on the object store.

Rank 0's termination message is the trainer's word; an object store can be asked without reading the
weights, so before a TrainingJob shows a checkpoint on an object store the operator asks (condition
CheckpointVerified). A claim cannot be asked: the operator mounts no volume, so a PVC checkpoint gets no
such condition. The answer is only ever a condition: weights that are there but cannot be checked are
not thrown away.

The HEAD is one path-style request (`<endpoint>/<bucket>/<key>`), signed with botocore's SigV4 signer
when the TrainingJob names a credentials Secret, sent with aiohttp: the whole of it (lookup, connect,
TLS, answer) has DEADLINE_S, and a HEAD past it is cancelled, its connection closed, and the checkpoint
Unchecked. No thread is held by a server that trickles its answer, and none of the loop's default
executor, where aiohttp resolves every other name: a host name is looked up on LOOKUP_THREADS threads of
this module's own, at most LOOKUPS_PER_NAMESPACE of them for one namespace's names.

Where the HEAD may go. A TrainingJob's author writes `spec.checkpoint.objectStore.endpoint`, and the
condition tells whether an object is there and its size, so the endpoint is checked before anything is
sent:

- STOPLINE_OBJECT_STORE_HOSTS, the operator's allow-list: comma-separated `host` or `host:port` patterns;
  `*.example.com` matches any name under example.com, `[fd00::1]:9000` an IPv6 address and port, a bare
  `host` any port. Unset or blank: any host not refused below. Without an endpoint the HEAD goes to
  `s3.<region>.amazonaws.com`, which the list must then match (`*.amazonaws.com`).
- Refused whatever the list says: an address that is link-local (169.254.0.0/16 and fe80::/10, where
  cloud metadata answers), a cloud metadata address outside it (AWS' fd00:ec2::254, Alibaba's
  100.100.100.200), multicast or unspecified (0.0.0.0/8, ::), IPv4-mapped IPv6 included.
- Loopback is refused when the operator runs in a pod (KUBERNETES_SERVICE_HOST is set, as for its API
  client), where it is the operator's own pod, unless STOPLINE_OBJECT_STORE_HOSTS is set (it matched the
  host: the administrator named it). Outside a pod, in development and tests, loopback is the machine the
  operator's user already runs it on, and allowed.
- The name is resolved once, every address it resolves to is checked, and the connection goes to those
  addresses: a second lookup (DNS rebinding) cannot send it elsewhere. No proxy is used
  (HTTP(S)_PROXY would resolve the name itself); TLS trusts the system's CAs, or AWS_CA_BUNDLE's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from stopline.api import ObjectStoreTarget, TrainingJobSpec
from stopline.kube import Kube
from stopline.lifecycle import Condition
from stopline.metrics.http import excerpt, no_answer
from stopline.vocabulary import (
    CHECKPOINT_VERIFIED,
    OBJECT_MISSING,
    OBJECT_OUTSIDE_TARGET,
    OBJECT_SIZE_MISMATCH,
    OBJECT_UNCHECKED,
    OBJECT_VERIFIED,
)

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

DEADLINE_S = 10.0
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
ALLOWED_HOSTS = "STOPLINE_OBJECT_STORE_HOSTS"
LOOKUP_THREADS = 8
LOOKUPS_PER_NAMESPACE = 2
_QUOTA_POLL_S = 0.05
_ENDPOINT = "spec.checkpoint.objectStore.endpoint"
_AWS_REGION = re.compile(r"[a-z0-9-]{1,32}")
_LENGTH = re.compile(r"[0-9]{1,19}")
_HOST_PATTERN = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]/]+))(?::(?P<port>[0-9]{1,5}))?"
)
_KEY = re.compile(r"[!-~]{1,256}")  # an access key or secret: printable ASCII, no space (it goes in a header)
_CLOUD_METADATA = (ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Unchecked(Exception):
    """The HEAD was not sent, or got no usable answer; the message says why, for the condition."""


def _bucket_and_key(uri: str) -> tuple[str, str] | None:
    """`s3://bucket/key`; None for anything else, or a key with `.` or `..` segments, which a server
    (or the URL path) may resolve to an object outside the bucket and prefix the check compared."""
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key or {".", ".."} & {bucket, *key.split("/")}:
        return None
    return bucket, key


async def verify_checkpoint(
    kube: Kube, namespace: str, spec: TrainingJobSpec, checkpoint: Mapping[str, Any]
) -> Condition | None:
    """CheckpointVerified for an object-store checkpoint; None for a PVC one (nothing to ask)."""
    target = spec.checkpoint.target
    if not isinstance(target, ObjectStoreTarget):
        return None
    uri = str(checkpoint.get("uri") or "")
    where = _bucket_and_key(uri)
    if where is None or not uri.startswith(target.uri.rstrip("/") + "/"):
        message = f"the trainer named {excerpt(uri)!r}, which is not under spec.checkpoint.objectStore.uri"
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_OUTSIDE_TARGET, message)
    try:
        endpoint = _endpoint(target)
    except _Unchecked as why:
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_UNCHECKED, str(why))
    credentials: dict[str, str] = {}
    if target.credentials_secret:
        for key in CREDENTIAL_KEYS:
            value = await kube.read_token(namespace, target.credentials_secret, key)
            if value:
                credentials[key] = value
    try:
        async with asyncio.timeout(DEADLINE_S):
            status, length = await _head(namespace, endpoint, target.region, credentials, *where)
    except TimeoutError:
        message = f"HEAD {excerpt(uri)} timed out: no whole answer within {DEADLINE_S:g} s"
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_UNCHECKED, message)
    except _Unchecked as why:
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_UNCHECKED, str(why))
    except (aiohttp.ClientError, OSError, ValueError):
        message = f"HEAD {excerpt(uri)}: {no_answer(DEADLINE_S)}"
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_UNCHECKED, message)
    if status == 404:
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_MISSING, f"{excerpt(uri)} does not exist")
    if status != 200 or length is None:
        message = f"HEAD {excerpt(uri)}: {_status_problem(status)}"
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_UNCHECKED, message)
    expected = checkpoint.get("bytes")
    if isinstance(expected, int) and length != expected:
        message = f"{excerpt(uri)} has {length} bytes, the trainer's manifest says {expected}"
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_SIZE_MISMATCH, message)
    message = f"{excerpt(uri)} exists with {length} bytes, as the trainer's manifest says"
    return Condition(CHECKPOINT_VERIFIED, True, OBJECT_VERIFIED, message)


def _status_problem(status: int) -> str:
    """What an answer other than a 404 or a 200 with its size says: its status, and what to check."""
    if status == 200:
        return "HTTP 200 without a Content-Length"
    if status == 403:
        return "HTTP 403: access denied (check spec.checkpoint.objectStore.credentialsSecret)"
    if 300 <= status < 400:
        return f"HTTP {status} redirect, not followed (check {_ENDPOINT} and the region)"
    return f"HTTP {status}"


# -- where the HEAD may go ----------------------------------------------------------------------------


def _endpoint(target: ObjectStoreTarget) -> URL:
    """The endpoint's URL if the allow-list lets the HEAD go there; else _Unchecked saying why."""
    if target.endpoint is None:
        region = target.region or "us-east-1"
        if not _AWS_REGION.fullmatch(region):
            raise _Unchecked(f"spec.checkpoint.objectStore.region {excerpt(region)!r} is not an AWS region")
        text = f"https://s3.{region}.amazonaws.com"
    else:
        text = target.endpoint
    try:
        url = URL(text)
        port = url.port
    except ValueError:
        raise _Unchecked(f"{_ENDPOINT} {excerpt(text)!r} is not a URL") from None
    if not url.raw_host or port is None or url.raw_user is not None or url.raw_query_string or url.fragment:
        raise _Unchecked(f"{_ENDPOINT} {excerpt(text)!r} must be scheme://host[:port][/path], nothing more")
    patterns = _allowed_hosts()
    if patterns is not None and not any(_matches(pattern, url.raw_host, port) for pattern in patterns):
        raise _Unchecked(f"{_ENDPOINT} {excerpt(text)!r} refused: its host is not in {ALLOWED_HOSTS}")
    return url


def _allowed_hosts() -> tuple[tuple[str, int | None], ...] | None:
    """STOPLINE_OBJECT_STORE_HOSTS as (host, port or None) patterns; None when unset or blank. An entry
    that is no pattern (`minio:http`, `fd00::1` without brackets) matches nothing: a typo narrows the
    list, never lifts it."""
    listed = [entry.strip() for entry in os.environ.get(ALLOWED_HOSTS, "").split(",") if entry.strip()]
    if not listed:
        return None
    patterns = (_HOST_PATTERN.fullmatch(entry) for entry in listed)
    return tuple(
        (_normal_host(found["ipv6"] or found["host"]), int(found["port"]) if found["port"] else None)
        for found in patterns
        if found is not None
    )


def _normal_host(host: str) -> str:
    """Lower case without a final dot; an IP address in its compressed form (`fd00:0::1` is `fd00::1`)."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _matches(pattern: tuple[str, int | None], host: str, port: int) -> bool:
    pattern_host, pattern_port = pattern
    if pattern_port is not None and pattern_port != port:
        return False
    host = _normal_host(host)
    if pattern_host.startswith("*."):
        return host.endswith(pattern_host[1:])
    return host == pattern_host


def _refusal(address: _Address) -> str | None:
    """Why the HEAD must not go to `address`, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local:
        return "a link-local address (where cloud metadata answers)"
    if address in _CLOUD_METADATA:
        return "a cloud metadata address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "an unspecified address"
    if address.is_loopback and "KUBERNETES_SERVICE_HOST" in os.environ and _allowed_hosts() is None:
        return f"loopback, the operator's own pod (name the host in {ALLOWED_HOSTS} to allow it)"
    return None


# -- the lookup, on threads of its own ------------------------------------------------------------------


class _Lookups:
    """getaddrinfo on threads of this module's own. A lookup blocks its thread until the resolver answers
    or gives up (resolv.conf's timeout and attempts, over every search domain): on the loop's default
    executor, the names of one tenant's DNS server would hold aiohttp's lookups for every other name.
    A namespace holds at most LOOKUPS_PER_NAMESPACE threads; its further lookups wait, within their
    deadline, for one of its own to end."""

    def __init__(self) -> None:
        self._threads = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="stopline-s3-lookup")
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    async def addresses(self, namespace: str, host: str, port: int) -> list[tuple[Any, ...]]:
        while not self._take(namespace):
            await asyncio.sleep(_QUOTA_POLL_S)
        lookup = self._threads.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        lookup.add_done_callback(lambda _: self._give_back(namespace))  # when the thread ends, not the wait
        return await asyncio.wrap_future(lookup)

    def _take(self, namespace: str) -> bool:
        with self._lock:
            if self._held[namespace] >= LOOKUPS_PER_NAMESPACE:
                return False
            self._held[namespace] += 1
            return True

    def _give_back(self, namespace: str) -> None:
        with self._lock:
            self._held[namespace] -= 1
            if not self._held[namespace]:
                del self._held[namespace]


_LOOKUPS = _Lookups()


class _Pinned(AbstractResolver):
    """aiohttp's resolver for one HEAD: the addresses already looked up and checked, never a new lookup."""

    def __init__(self, host: str, resolved: list[ResolveResult]) -> None:
        self._host, self._resolved = host, resolved

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self._host:
            raise OSError(f"only {self._host} was looked up")
        return self._resolved

    async def close(self) -> None:
        pass


async def _resolved(namespace: str, host: str, port: int) -> list[ResolveResult]:
    """Every address `host` resolves to, each checked; _Unchecked when one is refused."""
    try:
        literal: _Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        found = [(family, str(literal), port)]
    else:
        answers = await _LOOKUPS.addresses(namespace, host, port)
        found = list(
            dict.fromkeys((family, sockaddr[0], sockaddr[1]) for family, _, _, _, sockaddr in answers)
        )
    for _, address, _ in found:
        refusal = _refusal(ipaddress.ip_address(address))
        if refusal is not None:
            what = "is" if literal is not None else "resolves to"
            raise _Unchecked(f"{_ENDPOINT} refused: {excerpt(host)} {what} {refusal}")
    flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    return [
        {"hostname": host, "host": address, "port": number, "family": family, "proto": 0, "flags": flags}
        for family, address, number in found
    ]


# -- the HEAD ---------------------------------------------------------------------------------------------


async def _head(
    namespace: str,
    endpoint: URL,
    region: str | None,
    credentials: Mapping[str, str],
    bucket: str,
    key: str,
) -> tuple[int, int | None]:
    """The answer's status and its Content-Length (None when absent or not a number)."""
    assert endpoint.raw_host is not None and endpoint.port is not None  # _endpoint's checks
    resolved = await _resolved(namespace, endpoint.raw_host, endpoint.port)
    path = f"{endpoint.raw_path.rstrip('/')}/{quote(bucket, safe='')}/{quote(key)}"
    url = f"{endpoint.scheme}://{endpoint.raw_authority}{path}"
    # Only the TrainingJob's own credentials, never the operator's ambient ones (its environment, its
    # instance or pod identity): without a Secret the request goes unsigned, as to a public bucket.
    signed = all(name in credentials for name in CREDENTIAL_KEYS)
    headers = _signature(url, region or "us-east-1", credentials) if signed else {}
    connector = aiohttp.TCPConnector(
        resolver=_Pinned(endpoint.raw_host, resolved),
        use_dns_cache=False,
        force_close=True,
        ssl=_trusted() if endpoint.scheme == "https" else True,
    )
    async with (
        aiohttp.ClientSession(connector=connector, auto_decompress=False) as session,
        session.head(URL(url, encoded=True), headers=headers, allow_redirects=False) as answer,
    ):
        length = answer.headers.get("Content-Length", "")
        return answer.status, int(length) if _LENGTH.fullmatch(length) else None


def _signature(url: str, region: str, credentials: Mapping[str, str]) -> dict[str, str]:
    """SigV4 headers for a HEAD of `url` with the TrainingJob's keys: botocore signs, aiohttp sends."""
    try:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
    except ImportError:
        raise _Unchecked("the operator cannot sign the HEAD: it has no botocore (stopline[s3])") from None
    if not all(_KEY.fullmatch(credentials[name]) for name in CREDENTIAL_KEYS):
        raise _Unchecked("the keys in spec.checkpoint.objectStore.credentialsSecret are not printable ASCII")
    request = AWSRequest(method="HEAD", url=url)
    keys = Credentials(credentials["AWS_ACCESS_KEY_ID"], credentials["AWS_SECRET_ACCESS_KEY"])
    S3SigV4Auth(keys, "s3", region).add_auth(request)
    return {str(name): str(value) for name, value in request.headers.items()}


@cache
def _trusted() -> ssl.SSLContext:
    """The system's CAs, or AWS_CA_BUNDLE's as boto3 would: made once, not on every HEAD."""
    return ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
