"""The local model cache: content-addressed by sha256, verified before anything is unpacked.

Layout under :func:`cache_dir` (``$CELLZOO_CACHE_DIR``, else the platform cache folder)::

    models/<sha256>/      an unpacked, verified model (renamed into place whole)
    downloads/            partial downloads (temporary)
    locks/<sha256>.lock   one process fetches a given model at a time

A model that is cached needs no network.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from runner.archive import safe_extract, sha256_file
from runner.errors import ModelError

logger = logging.getLogger(__name__)

CACHE_ENV = "CELLZOO_CACHE_DIR"
HTTP_TIMEOUT = (10, 60)  # connect, read (seconds)


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("cellzoo")).expanduser()


def cached_model_dir(sha256: str) -> Path:
    return cache_dir() / "models" / sha256


def is_cached(sha256: str) -> bool:
    return (cached_model_dir(sha256) / "MLmodel").is_file()


def fetch_model(url: str, sha256: str) -> Path:
    """The unpacked model for an archive ``url`` whose content must hash to ``sha256``.

    ``url`` is a local path, ``file://`` or ``http(s)://`` URL. Nothing unverified is kept.
    """
    from filelock import FileLock

    target = cached_model_dir(sha256)
    if is_cached(sha256):
        return target
    (cache_dir() / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir() / "locks" / f"{sha256}.lock")):
        if is_cached(sha256):  # another process finished it while we waited
            return target
        staging_root = cache_dir() / "downloads"
        staging_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging_root) as tmp:
            archive = _obtain(url, Path(tmp) / "model.zip")
            seen = sha256_file(archive)
            if seen != sha256:
                raise ModelError(
                    f"checksum mismatch for {url}: expected sha256 {sha256}, got {seen}; the archive was "
                    "refused and deleted. The file changed since it was pinned: ask its publisher, or pin the new hash."
                )
            unpacked = Path(tmp) / "model"
            safe_extract(archive, unpacked)
            if not (unpacked / "MLmodel").is_file():
                raise ModelError(f"{url} is not an MLflow model archive (no MLmodel at its root)")
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # a leftover without MLmodel: never trust it
                shutil.rmtree(target)
            os.replace(unpacked, target)
    logger.info("cached model %s in %s", sha256[:12], target)
    return target


def _obtain(url: str, dest: Path) -> Path:
    """A local copy of ``url``: local files are used in place, HTTP(S) is downloaded to ``dest``."""
    if url.startswith(("http://", "https://")):
        _download(url, dest)
        return dest
    path = Path(url2pathname(urlparse(url).path)) if url.startswith("file://") else Path(url).expanduser()
    if not path.is_file():
        raise ModelError(f"model archive {path} does not exist")
    return path


def _download(url: str, dest: Path) -> None:
    import requests
    from tqdm.auto import tqdm

    try:
        with requests.get(url, stream=True, timeout=HTTP_TIMEOUT) as response:
            if response.status_code != 200:
                raise ModelError(f"could not download {url}: HTTP {response.status_code} {response.reason}")
            total = int(response.headers.get("content-length") or 0) or None
            with open(dest, "wb") as fh, tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
                for chunk in response.iter_content(1 << 20):
                    fh.write(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as err:
        raise ModelError(f"could not download {url}: {err}. Check the address and your network.") from err
