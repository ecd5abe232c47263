"""HTTP(S) downloads: timeouts, retries with backoff, resume with HTTP Range, a progress bar.

Only :mod:`runner.cache` calls this; it downloads into its own temporary folder, verifies the sha256,
and only then keeps anything. Settings (environment variables, for slow links and for the tests):

- ``CELLZOO_HTTP_TIMEOUT``: seconds to wait to connect and between received bytes (default 30; above 0).
- ``CELLZOO_HTTP_RETRIES``: attempts after the first one (default 3; a whole number, 0 to 100); the waits
  are 0.5 s, 1 s, 2 s ...

What a server says is checked, not believed: a download stops as soon as it passes the size it must have
(the registry's ``size``, else :data:`MAX_DOWNLOAD_BYTES`); a transfer shorter than the announced or expected
size is resumed; a ``206`` whose ``Content-Range`` does not start where the file ends is not appended (the
download starts again from zero); a malformed ``Content-Length`` is ignored (the size is then unknown).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path

from runner.errors import ModelError, UsageError

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "CELLZOO_HTTP_TIMEOUT"
RETRIES_ENV = "CELLZOO_HTTP_RETRIES"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
BACKOFF = 0.5  # seconds before the first retry, doubled for each next one
CHUNK = 1 << 16
FATAL_STATUS = range(400, 500)  # a client error will not change on retry (408 and 429 excepted)
RETRY_STATUS = {408, 429}
MAX_DOWNLOAD_BYTES = 2 * 1024**3  # a download of unknown size stops here (as many as an archive may unpack to)
MAX_RETRIES = 100
DIGITS = re.compile(r"^[0-9]{1,18}$")
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _Retry(Exception):
    """An attempt that may succeed if tried again (connection lost, timeout, server error)."""


def _timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"${TIMEOUT_ENV} must be a number of seconds above 0, got {value!r}")
    return seconds


def _retries() -> int:
    value = os.environ.get(RETRIES_ENV)
    if not value:
        return DEFAULT_RETRIES
    if not DIGITS.match(value.strip()) or int(value) > MAX_RETRIES:
        raise UsageError(f"${RETRIES_ENV} must be a whole number from 0 to {MAX_RETRIES}, got {value!r}")
    return int(value)


def _length(headers) -> int | None:
    """The ``Content-Length`` of a response, or ``None`` when it is absent or malformed (e.g. ``abc``, or two
    different values)."""
    values = {v.strip() for v in (headers.get("content-length") or "").split(",")}
    if len(values) != 1 or not DIGITS.match(next(iter(values))):
        return None
    return int(next(iter(values)))


def download(url: str, dest: Path, *, expected_size: int | None = None) -> None:
    """Download ``url`` into ``dest``, resuming from what ``dest`` holds (after a dropped connection, or
    what an interrupted run left there). ``expected_size``: the size the file must have, if known.

    Raises
    ------
    UsageError
        A malformed ``CELLZOO_HTTP_TIMEOUT`` or ``CELLZOO_HTTP_RETRIES``.
    ModelError
        An HTTP error status (with its code), an unreachable host, a file larger than it may be, or a
        transfer that kept failing after the retries; the message names the URL and says what to check.
    """
    import requests

    timeout, retries = _timeout(), _retries()
    limit = expected_size if expected_size is not None else MAX_DOWNLOAD_BYTES
    if dest.exists() and dest.stat().st_size > limit:
        dest.unlink()
    last = ""
    with requests.Session() as session:
        for attempt in range(retries + 1):
            if attempt:
                wait = BACKOFF * 2 ** (attempt - 1)
                logger.info("download of %s failed (%s); retrying in %.1f s", url, last, wait)
                time.sleep(wait)
            try:
                _attempt(session, url, dest, timeout, expected_size, limit)
                return
            except _Retry as err:
                last = str(err)
            except requests.RequestException as err:
                last = f"{type(err).__name__}: {err}"
    raise ModelError(
        f"could not download {url} after {retries + 1} attempts: {last}. Check the address and your network "
        "(or use a cached model with --offline)."
    )


def _too_large(url: str, size: int, limit: int, expected_size: int | None) -> ModelError:
    bound = f"the {limit} bytes the registry states" if expected_size is not None else f"{limit} bytes (the cap)"
    return ModelError(
        f"refusing {url}: the server sends {size} bytes or more, beyond {bound}; nothing was kept. "
        "Check the address: this is not the archive that was registered"
    )


def _attempt(session, url: str, dest: Path, timeout: float, expected_size: int | None, limit: int) -> None:
    """One GET; appends to ``dest`` when the server honours the Range of what it already holds."""
    import requests
    from tqdm.auto import tqdm

    have = dest.stat().st_size if dest.exists() else 0
    if have and have == expected_size:
        return  # everything was there already (left by an interrupted run)
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
        status = response.status_code
        if status in FATAL_STATUS and status not in RETRY_STATUS:
            raise ModelError(f"could not download {url}: HTTP {status} {response.reason}")
        if status not in (200, 206):
            raise _Retry(f"HTTP {status} {response.reason}")
        if status == 200:
            have = 0  # the server sent the whole file (it ignores ranges, or this is the first attempt)
        else:
            _check_range(response.headers.get("content-range") or "", have, dest)
            logger.info("resuming %s at byte %d", url, have)
        length = _length(response.headers)
        total = have + length if length is not None else expected_size
        if total is not None and total > limit:
            raise _too_large(url, total, limit, expected_size)
        with (
            open(dest, "ab" if have else "wb") as fh,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar,
        ):
            try:
                for chunk in response.iter_content(CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
                    if fh.tell() > limit:
                        raise _too_large(url, fh.tell(), limit, expected_size)
            except requests.RequestException as err:
                raise _Retry(f"connection lost at byte {fh.tell()}: {err}") from err
            received = fh.tell()
    if total is not None and received < total:
        raise _Retry(f"connection closed at byte {received} of {total}")
    if expected_size is not None and received != expected_size:
        dest.unlink()  # whole as the server sees it, but not the registered file: start again from zero
        raise _Retry(f"received {received} bytes, but the registry states {expected_size}")


def _check_range(content_range: str, have: int, dest: Path) -> None:
    """A ``206`` must continue the file where it ends; else the part held is dropped and the next attempt
    starts from zero."""
    found = CONTENT_RANGE.match(content_range.strip())
    if found is None or int(found[1]) != have:
        dest.unlink(missing_ok=True)
        raise _Retry(f"the server answered a resume at byte {have} with the range {content_range[:80]!r}")
