"""Model references -> a local, verified MLflow model directory (``resolve_model_ref``).

Accepted references, and when each is trusted (loading a pyfunc runs its Python code):

=====================================  ==========================================================
``NAME``, ``NAME@VERSION``             a registry entry (zoo or user registry): trusted, pinned by sha256
``URL#sha256=HEX``                     ``https://``, ``http://``, ``file://``: trusted, the pin fixes the bytes
``https://…``, ``http://…``, ``file://…``  no pin: needs ``trust=True`` (``--trust``), a folder too
``path/to/model.zip``                  trusted if its sha256 is in a registry, else needs ``--trust``
``path/to/model_dir/``                 trusted: a folder the user points to by a path is the user's own code
``models:/NAME/N``, ``runs:/ID/PATH``  trusted: the user's own MLflow tracking server
                                       (``tracking_uri`` or ``$MLFLOW_TRACKING_URI``)
=====================================  ==========================================================

A bare name (no ``/``) always means the registry: a local file or folder is written as a path
(``./pbmc``), so that a folder in the working directory never stands in for a registry model. A bare
name that is also a file or folder here is refused, with both readings.

An MLflow model is downloaded with MLflow's client, packed into a deterministic zip and cached by
that zip's sha256 (so the same files give the same sha256 as the zoo's archive of them).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runner import cache
from runner.archive import pack_model_dir, sha256_file
from runner.errors import ModelError, UsageError
from runner.registry import NAME, VERSION, load_registries

PINNED_URL = re.compile(r"^(?P<url>(?:https?|file)://[^#]+)#sha256=(?P<sha256>[0-9a-f]{64})$")
URL = re.compile(r"^(?:https?|file)://[^#]+$")
MLFLOW_URI = re.compile(r"^(?:models|runs):/.+")
REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))$")  # NAME/N, NAME@alias
TRACKING_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_ENV = "MLFLOW_REGISTRY_URI"  # MLflow's own: a model registry apart from the tracking server
TRUST_HINT = (
    "loading an MLflow model runs its Python code. Pass --trust if you trust where it comes from, "
    "or use a registry name or a URL pinned with #sha256=<64 hex>"
)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model is on disk, and what it is: the provenance written into ``uns``."""

    path: Path
    reference: str  # what the user gave
    url: str  # where the bytes came from
    sha256: str  # of the archive ('' for a local directory, which has no archive)
    registry_name: str = ""
    registry_version: str = ""
    tracking_uri: str = ""  # the MLflow tracking server of a models:/ or runs:/ reference


def resolve_model_ref(
    reference: str,
    *,
    trust: bool = False,
    offline: bool = False,
    tracking_uri: str | None = None,
    registries: list[Path] | tuple[Path, ...] = (),
) -> ResolvedModel:
    """Resolve ``reference`` (see the module docstring) to a verified model folder, fetching it if needed.

    Parameters
    ----------
    reference
        What the user gave to ``-m``.
    trust
        Allow references that are neither registered nor pinned.
    offline
        Use no network: remote archives must be cached; ``models:/`` and ``runs:/`` fail.
    tracking_uri
        MLflow tracking server for ``models:/`` and ``runs:/`` (default ``$MLFLOW_TRACKING_URI``).
    registries
        User registry files layered over the zoo's (see :mod:`runner.registry`).

    Raises
    ------
    UsageError
        An unknown name or version, a reference of no known form, or one that needs ``--trust``.
    ModelError
        A model that cannot be fetched, verified or unpacked.
    """
    if MLFLOW_URI.match(reference):
        return _from_mlflow(reference, tracking_uri or os.environ.get(TRACKING_ENV), offline)
    name, _, version = reference.partition("@")
    if NAME.match(name) and (not version or VERSION.match(version)) and "/" not in reference:
        return _from_registry(reference, name, version, registries, offline)
    is_url = URL.match(reference)
    local = Path(reference.removeprefix("file://") if is_url else reference).expanduser()
    if local.is_dir() and is_url and not trust:
        raise UsageError(f"refusing {reference}: the URL names a folder, which has no pin; {TRUST_HINT}")
    if local.is_dir():
        if not (local / "MLmodel").is_file():
            raise UsageError(f"{local} is a folder but not an MLflow model directory (no MLmodel file in it)")
        return ResolvedModel(path=local.resolve(), reference=reference, url=local.resolve().as_uri(), sha256="")
    if local.is_file():
        digest = sha256_file(local)
        if not trust and load_registries(registries).by_sha256(digest) is None:
            raise UsageError(f"refusing {reference}: this archive (sha256 {digest}) is in no registry; {TRUST_HINT}")
        path = cache.fetch_model(str(local.resolve()), digest)
        return ResolvedModel(path=path, reference=reference, url=local.resolve().as_uri(), sha256=digest)
    pinned = PINNED_URL.match(reference)
    if pinned:
        path = cache.fetch_model(pinned["url"], pinned["sha256"], offline=offline)
        return ResolvedModel(path=path, reference=reference, url=pinned["url"], sha256=pinned["sha256"])
    if "#sha256=" in reference:
        raise UsageError(f"malformed pin in {reference!r}: expected URL#sha256=<64 lower-case hex digits>")
    if URL.match(reference):
        if not reference.startswith(cache.REMOTE_SCHEMES):
            raise ModelError(f"model archive {local} does not exist")
        if not trust:
            raise UsageError(f"refusing {reference}: the URL has no #sha256= pin and is in no registry; {TRUST_HINT}")
        path, digest = cache.fetch_unpinned(reference, offline=offline)
        return ResolvedModel(path=path, reference=reference, url=reference, sha256=digest)
    raise UsageError(
        f"cannot resolve model {reference!r}: not a registry name (NAME or NAME@VERSION), an existing model "
        "directory or zip, a URL (https://HOST/PATH.zip#sha256=<64 hex>), or an MLflow URI (models:/NAME/N)"
    )


def _from_registry(
    reference: str, name: str, version: str, registries: list[Path] | tuple[Path, ...], offline: bool
) -> ResolvedModel:
    """A registry entry, refused when the bare name is also a file or folder here (both readings said)."""
    here = Path(reference)
    if here.exists() or here.is_symlink():
        kind = "folder" if here.is_dir() else "file"
        try:
            entry = load_registries(registries).get(name, version or None)
            registry = f"the registry model {entry.name} {entry.version} (pinned: {entry.pinned_reference})"
        except UsageError:
            registry = "no registry model"
        raise UsageError(
            f"-m {reference} is ambiguous: it names {registry} and the {kind} ./{reference} here. A bare name means "
            f"the registry: run from another folder (or use the pinned reference) for the registry model, or write "
            f"./{reference} for the {kind} (its code runs when it is loaded)"
        )
    entry = load_registries(registries).get(name, version or None)
    path = cache.fetch_model(entry.url, entry.sha256, size=entry.size, offline=offline)
    return ResolvedModel(
        path=path,
        reference=reference,
        url=entry.url,
        sha256=entry.sha256,
        registry_name=entry.name,
        registry_version=entry.version,
    )


def _from_mlflow(reference: str, tracking_uri: str | None, offline: bool) -> ResolvedModel:
    """Download ``models:/…`` or ``runs:/…`` with MLflow's client, then cache it as a deterministic zip."""
    if offline:
        raise ModelError(
            f"offline, and {reference} needs the MLflow tracking server; use the sha256 an earlier run "
            "recorded (uns[K]['model']) with a cached archive, or drop --offline"
        )
    if not tracking_uri:
        raise UsageError(f"{reference} needs an MLflow tracking server: pass --tracking-uri or set ${TRACKING_ENV}")
    import mlflow

    # models:/ is looked up in the model registry, which MLflow does not take from `tracking_uri`
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(os.environ.get(REGISTRY_ENV) or tracking_uri)
    name, version, source = _registered_version(reference)
    with tempfile.TemporaryDirectory(prefix="cellzoo-mlflow-") as tmp:
        download = Path(tmp) / "download"
        download.mkdir()
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(download), tracking_uri=tracking_uri
            )
        except (mlflow.exceptions.MlflowException, OSError) as err:
            raise ModelError(f"could not download {reference} from the tracking server {tracking_uri}: {err}") from err
        archive = Path(tmp) / "model.zip"
        pack_model_dir(Path(local), archive)
        path, digest = cache.store_archive(archive, reference)
    return ResolvedModel(
        path=path,
        reference=reference,
        url=source,
        sha256=digest,
        registry_name=name,
        registry_version=version,
        tracking_uri=tracking_uri,
    )


def _registered_version(reference: str) -> tuple[str, str, str]:
    """(registered model name, version, the URI to download) of a ``models:/`` reference; an ``@alias`` is
    resolved to the version it names now, and that version is downloaded (the alias may move meanwhile).
    ``('', '', reference)`` for any other MLflow URI."""
    import mlflow

    registered = REGISTERED.match(reference)
    if not registered:
        return "", "", reference
    name, version = registered["name"], registered["version"]
    if registered["alias"]:
        try:
            version = str(mlflow.MlflowClient().get_model_version_by_alias(name, registered["alias"]).version)
        except mlflow.exceptions.MlflowException as err:
            raise ModelError(f"could not resolve {reference} in the model registry: {err}") from err
    return name, version, f"models:/{name}/{version}"
