"""Model references -> a local, verified MLflow model directory (``resolve_model_ref``).

Accepted: ``NAME`` and ``NAME@VERSION`` (the registry), ``URL#sha256=HEX`` (a pinned archive, as
cited in a paper; ``https://``, ``http://``, ``file://``), a local model directory, or a local zip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from runner import cache
from runner.archive import sha256_file
from runner.errors import UsageError
from runner.registry import load_registry

PINNED_URL = re.compile(r"^(?P<url>(?:https?|file)://[^#]+)#sha256=(?P<sha256>[0-9a-f]{64})$")
NAME_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<version>[A-Za-z0-9_.+-]+))?$")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model is on disk, and what it is: the provenance written into ``uns``."""

    path: Path
    reference: str  # what the user gave
    url: str  # where the bytes came from
    sha256: str  # of the archive ('' for a local directory, which has no archive)
    registry_name: str = ""
    registry_version: str = ""


def resolve_model_ref(reference: str) -> ResolvedModel:
    local = Path(reference).expanduser()
    if local.is_dir():
        if not (local / "MLmodel").is_file():
            raise UsageError(f"{local} is a folder but not an MLflow model directory (no MLmodel file in it)")
        return ResolvedModel(path=local.resolve(), reference=reference, url=local.resolve().as_uri(), sha256="")
    if local.is_file():
        digest = sha256_file(local)
        path = cache.fetch_model(str(local.resolve()), digest)
        return ResolvedModel(path=path, reference=reference, url=local.resolve().as_uri(), sha256=digest)
    pinned = PINNED_URL.match(reference)
    if pinned:
        path = cache.fetch_model(pinned["url"], pinned["sha256"])
        return ResolvedModel(path=path, reference=reference, url=pinned["url"], sha256=pinned["sha256"])
    named = NAME_REF.match(reference)
    if named and "/" not in reference:
        entry = load_registry().get(named["name"], named["version"])
        path = cache.fetch_model(entry.url, entry.sha256)
        return ResolvedModel(
            path=path,
            reference=reference,
            url=entry.url,
            sha256=entry.sha256,
            registry_name=entry.name,
            registry_version=entry.version,
        )
    raise UsageError(
        f"cannot resolve model {reference!r}: not a registry name (NAME or NAME@VERSION), an existing model "
        "directory or zip, or a pinned URL (https://HOST/PATH.zip#sha256=<64 hex>)"
    )
