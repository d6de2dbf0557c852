"""Read one trainer pod's /metrics over HTTP. The parsing is metrics.exposition's; this is only the fetch."""

from __future__ import annotations

import aiohttp

from stopline.metrics.exposition import ExpositionError, TrainerReport, parse_exposition

MAX_BYTES = 1 << 20  # a trainer's exposition is a few KiB; more is not a stopline trainer


class ScrapeError(RuntimeError):
    """The pod's /metrics could not be read or parsed; the message says which URL and why."""


async def scrape(session: aiohttp.ClientSession, url: str, timeout_s: float) -> TrainerReport:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                raise ScrapeError(f"GET {url}: HTTP {response.status}")
            text = await response.content.read(MAX_BYTES)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise ScrapeError(f"GET {url}: {type(error).__name__} {error}".rstrip()) from None
    try:
        return parse_exposition(text.decode("utf-8", errors="replace"))
    except ExpositionError as error:
        raise ScrapeError(f"GET {url}: {error}") from None
