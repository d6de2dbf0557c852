"""How much memory one hostile Prometheus answer costs the operator, and what error it leaves behind.

A stand-in server on 127.0.0.1 answers /api/v1/query with:
- big:     a 64 MiB JSON answer (an `error` field of 64 MiB), its Content-Length declared;
- chunked: the same 64 MiB, chunked: no length to refuse it by, so only the running count stops it;
- bomb:    a 47 KiB gzip body that inflates to 48 MiB of JSON, sent whatever the request asked for;
- slow:    a chunked body that never ends, one byte every 0.5 s;
- tiny:    8 MiB of empty series (`[{},{},...]`): under the cap, the most Python objects per byte.
Each case runs `prometheus.instant_query` in a fresh child process, once per client session: the plain
session handlers.py made at first, and `stopline.metrics.http.client_session()` where it exists. Printed:
peak RSS growth (VmHWM after the query minus VmRSS before it), seconds taken, and the error's type, length
and first characters. Figures only; nothing is asserted.

Run: .venv/bin/python bench/hostile/prometheus_rss.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from stopline.metrics import prometheus

CASES = ("big", "chunked", "bomb", "slow", "tiny")
TIMEOUT_S = 5.0  # the supervisor's SCRAPE_TIMEOUT_S
CHUNK = 1 << 20


def error_answer(size: int) -> Iterator[bytes]:
    """A Prometheus error answer whose `error` text makes it `size` bytes, in 1 MiB pieces."""
    head, tail = b'{"status":"error","errorType":"bad_data","error":"', b'"}'
    yield head
    left = size - len(head) - len(tail)
    while left > 0:
        yield b"A" * min(CHUNK, left)
        left -= CHUNK
    yield tail


def gzipped(pieces: Iterator[bytes]) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    return b"".join(packer.compress(piece) for piece in pieces) + packer.flush()


def tiny_series(size: int) -> bytes:
    head, tail = b'{"status":"success","data":{"resultType":"vector","result":[', b"{}]}}"
    return head + b"{}," * ((size - len(head) - len(tail)) // 3) + tail


async def answer(case: str, writer: asyncio.StreamWriter, bomb: bytes) -> None:
    if case == "big":
        size = 64 << 20
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(f"Content-Length: {size}\r\n\r\n".encode())
        for piece in error_answer(size):
            writer.write(piece)
            await writer.drain()
    elif case == "chunked":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for piece in error_answer(64 << 20):
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
    elif case == "bomb":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n")
        writer.write(f"Content-Length: {len(bomb)}\r\n\r\n".encode() + bomb)
    elif case == "slow":
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        while True:
            writer.write(b"1\r\n \r\n")
            await writer.drain()
            await asyncio.sleep(0.5)
    else:
        body = tiny_series((8 << 20) - 1024)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()


async def serve(case: str, bomb: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        await answer(case, writer, bomb)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def session_of(kind: str) -> aiohttp.ClientSession:
    if kind == "plain":
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    from stopline.metrics.http import client_session

    return client_session()


async def one(case: str, kind: str) -> dict[str, object]:
    bomb = gzipped(error_answer(48 << 20)) if case == "bomb" else b""  # built before measuring
    server = await asyncio.start_server(lambda r, w: serve(case, bomb, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with session_of(kind) as session:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before, started = kib("VmRSS"), time.monotonic()
        try:
            samples = await prometheus.instant_query(session, f"http://127.0.0.1:{port}", "up", TIMEOUT_S)
            outcome = f"{len(samples)} samples"
        except Exception as error:  # the point is to see what escapes, whatever it is
            text = str(error)
            outcome = f"{type(error).__name__} ({len(text)} chars): {text[:150]!r}"
        peak = kib("VmHWM")
    server.close()
    return {"case": case, "session": kind, "growth_mib": (peak - before) / 1024,
            "seconds": time.monotonic() - started, "outcome": outcome}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--session", choices=("plain", "client_session"))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(asyncio.run(one(args.case, args.session))))
        return
    try:
        from stopline.metrics.http import client_session  # noqa: F401

        kinds: tuple[str, ...] = ("plain", "client_session")
    except ImportError:
        kinds = ("plain",)
    print(f"{'case':8} {'session':15} {'peak RSS growth':>16} {'seconds':>8}  outcome")
    for case in CASES:
        for kind in kinds:
            child = [sys.executable, __file__, "--case", case, "--session", kind]
            done = subprocess.run(child, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{case:8} {kind:15} child failed rc={done.returncode}: {done.stderr.strip()[-300:]}")
                continue
            row = json.loads(done.stdout)
            print(
                f"{case:8} {kind:15} {row['growth_mib']:>12.1f} MiB {row['seconds']:>8.2f}  {row['outcome']}"
            )


if __name__ == "__main__":
    main()
