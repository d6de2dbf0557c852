"""Read one trainer pod's /metrics over HTTP. The parsing is metrics.exposition's; this is only the fetch."""

from __future__ import annotations

import aiohttp

from stopline.metrics.exposition import ExpositionError, TrainerReport, parse_exposition
from stopline.metrics.http import SCRAPE_MAX_BYTES, FetchError, fetch_ok, message


class ScrapeError(RuntimeError):
    """The pod's /metrics could not be read or parsed; the message says which URL and why. `silent`:
    nothing answered at all (FetchError.silent), as from a trainer that hangs."""

    def __init__(self, text: str, silent: bool = False) -> None:
        super().__init__(text)
        self.silent = silent


async def scrape(session: aiohttp.ClientSession, url: str, timeout_s: float) -> TrainerReport:
    try:
        body = await fetch_ok(session, url, limit=SCRAPE_MAX_BYTES, timeout_s=timeout_s)
    except FetchError as error:
        raise ScrapeError(str(error), error.silent) from None
    try:
        return parse_exposition(body.decode("utf-8", errors="replace"))
    except ExpositionError as error:
        raise ScrapeError(message(f"GET {url}", str(error))) from None
