"""HTTP(S) downloads: timeouts, retries with backoff, resume with HTTP Range, a progress bar.

Only :mod:`runner.cache` calls this; it downloads into its own temporary folder, verifies the sha256,
and only then keeps anything. Settings (environment variables, for slow links and for the tests):

- ``CELLZOO_HTTP_TIMEOUT``: seconds to wait to connect and between received bytes (default 30).
- ``CELLZOO_HTTP_RETRIES``: attempts after the first one (default 3); the waits are 0.5 s, 1 s, 2 s ...
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from runner.errors import ModelError

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "CELLZOO_HTTP_TIMEOUT"
RETRIES_ENV = "CELLZOO_HTTP_RETRIES"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
BACKOFF = 0.5  # seconds before the first retry, doubled for each next one
CHUNK = 1 << 16
FATAL_STATUS = range(400, 500)  # a client error will not change on retry (408 and 429 excepted)
RETRY_STATUS = {408, 429}


class _Retry(Exception):
    """An attempt that may succeed if tried again (connection lost, timeout, server error)."""


def _setting(env: str, default: float) -> float:
    value = os.environ.get(env)
    try:
        return float(value) if value else default
    except ValueError as err:
        raise ModelError(f"${env} must be a number, got {value!r}") from err


def download(url: str, dest: Path, *, expected_size: int | None = None) -> None:
    """Download ``url`` into ``dest``, resuming from what ``dest`` holds after a dropped connection.

    Raises
    ------
    ModelError
        An HTTP error status (with its code), an unreachable host, or a transfer that kept failing
        after the retries; the message names the URL and says what to check.
    """
    import requests

    timeout = _setting(TIMEOUT_ENV, DEFAULT_TIMEOUT)
    retries = int(_setting(RETRIES_ENV, DEFAULT_RETRIES))
    last = ""
    with requests.Session() as session:
        for attempt in range(retries + 1):
            if attempt:
                wait = BACKOFF * 2 ** (attempt - 1)
                logger.info("download of %s failed (%s); retrying in %.1f s", url, last, wait)
                time.sleep(wait)
            try:
                _attempt(session, url, dest, timeout, expected_size)
                return
            except _Retry as err:
                last = str(err)
            except requests.RequestException as err:
                last = f"{type(err).__name__}: {err}"
    raise ModelError(
        f"could not download {url} after {retries + 1} attempts: {last}. Check the address and your network "
        "(or use a cached model with --offline)."
    )


def _attempt(session, url: str, dest: Path, timeout: float, expected_size: int | None) -> None:
    """One GET; appends to ``dest`` when the server honours the Range of what it already holds."""
    import requests
    from tqdm.auto import tqdm

    have = dest.stat().st_size if dest.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
        status = response.status_code
        if status == 416 and have and have == expected_size:
            return  # everything was there already
        if status in FATAL_STATUS and status not in RETRY_STATUS:
            raise ModelError(f"could not download {url}: HTTP {status} {response.reason}")
        if status not in (200, 206):
            raise _Retry(f"HTTP {status} {response.reason}")
        if status == 200:
            have = 0  # the server sent the whole file (it ignores ranges, or this is the first attempt)
        elif have:
            logger.info("resuming %s at byte %d", url, have)
        length = response.headers.get("content-length")
        total = have + int(length) if length else expected_size
        with (
            open(dest, "ab" if have else "wb") as fh,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar,
        ):
            try:
                for chunk in response.iter_content(CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as err:
                raise _Retry(f"connection lost at byte {fh.tell()}: {err}") from err
            received = fh.tell()
    if total is not None and received < total:
        raise _Retry(f"connection closed at byte {received} of {total}")
