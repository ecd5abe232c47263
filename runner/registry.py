"""The model registry (``registry.yaml``): schema, validation, and name[@version] lookup.

Schema (``schema_version: 1``)::

    models:
      NAME:
        default: VERSION              # the version `-m NAME` resolves to
        versions:
          VERSION:
            url: models/NAME-VERSION.zip   # relative to the registry file, or file:// / https://
            sha256: <64 hex>               # of the archive; a mismatch is refused
            size: <bytes>
            family: linear | scanvi | xgboost
            species: human | mouse
            tissue: <text>
            description: <text>

The zoo's own registry is ``registry.yaml`` at the repository root; ``$CELLZOO_REGISTRY`` points
elsewhere.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from runner.errors import RegistryError, UsageError

REGISTRY_ENV = "CELLZOO_REGISTRY"
ZOO_REGISTRY = Path(__file__).resolve().parent.parent / "registry.yaml"
SCHEMA_VERSION = 1
VERSION_FIELDS = {
    "url": str,
    "sha256": str,
    "size": int,
    "family": str,
    "species": str,
    "tissue": str,
    "description": str,
}
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RegistryEntry:
    """One model version from a registry, with its URL made absolute."""

    name: str
    version: str
    url: str
    sha256: str
    size: int
    family: str
    species: str
    tissue: str
    description: str
    is_default: bool

    @property
    def pinned_reference(self) -> str:
        """The string to cite: resolves to exactly these bytes, with or without the registry."""
        return f"{self.url}#sha256={self.sha256}"


@dataclass(frozen=True)
class Registry:
    path: Path
    entries: dict[str, dict[str, RegistryEntry]]  # name -> version -> entry
    defaults: dict[str, str]

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str, version: str | None = None) -> RegistryEntry:
        if name not in self.entries:
            unbuilt = unbuilt_recipe(name)
            if unbuilt is not None:
                raise UsageError(unbuilt)
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"unknown model {name!r}; the registry {self.path} has: {', '.join(self.names())}.{hint}")
        versions = self.entries[name]
        version = version or self.defaults[name]
        if version not in versions:
            raise UsageError(f"model {name!r} has no version {version!r}; versions: {', '.join(sorted(versions))}")
        return versions[version]


def recipes_dir() -> Path:
    """The zoo's recipes (``model_zoo/recipes``), located without importing ``model_zoo``."""
    spec = importlib.util.find_spec("model_zoo")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "recipes"
    return ZOO_REGISTRY.parent / "model_zoo" / "recipes"


def unbuilt_recipe(name: str) -> str | None:
    """What to tell a user who asks for a zoo recipe that has no registry entry (None: no such recipe).

    The recipe is read as data (YAML); nothing of ``model_zoo`` is imported.
    """
    import yaml

    path = recipes_dir() / f"{name}.yaml"
    if not path.is_file():
        return None
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        recipe = {}
    ref = recipe.get("reference") or {}
    files = ref.get("files") or ["REFERENCE.h5ad"]
    references = " ".join(f"--reference {f}" for f in files)
    source = ref.get("source_url") or "see the recipe"
    target = f"build/{name}-{recipe.get('version', 'VERSION')}"
    return (
        f"model {name!r} is a zoo recipe ({path}) that has not been built: its reference cannot be shipped, "
        f"so the registry has no entry for it. Download the reference ({source}), build the model with "
        f"`cellzoo build {name} {references} --out build`, then annotate with `-m {target}`."
    )


def registry_path() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or ZOO_REGISTRY).expanduser()


def load_registry(path: Path | None = None) -> Registry:
    """Read and validate a registry file; errors name the file, entry and field."""
    import yaml

    path = path or registry_path()
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise RegistryError(f"registry file {path} does not exist (set ${REGISTRY_ENV} to another)") from err
    except yaml.YAMLError as err:
        raise RegistryError(f"registry {path} is not valid YAML: {err}") from err
    if (
        not isinstance(doc, dict)
        or doc.get("schema_version") != SCHEMA_VERSION
        or not isinstance(doc.get("models"), dict)
    ):
        raise RegistryError(f"registry {path}: expected 'schema_version: {SCHEMA_VERSION}' and a 'models' mapping")
    entries: dict[str, dict[str, RegistryEntry]] = {}
    defaults: dict[str, str] = {}
    for name, spec in doc["models"].items():
        where = f"registry {path}, model {name!r}"
        if not isinstance(spec, dict) or not isinstance(spec.get("versions"), dict) or not spec["versions"]:
            raise RegistryError(f"{where}: needs a non-empty 'versions' mapping")
        versions = {str(v): _entry(path, str(name), str(v), fields, where) for v, fields in spec["versions"].items()}
        default = str(spec.get("default", ""))
        if default not in versions:
            raise RegistryError(f"{where}: 'default' {default!r} is not one of its versions {sorted(versions)}")
        entries[str(name)] = {
            v: RegistryEntry(**{**e.__dict__, "is_default": v == default}) for v, e in versions.items()
        }
        defaults[str(name)] = default
    return Registry(path=path, entries=entries, defaults=defaults)


def _entry(path: Path, name: str, version: str, fields, where: str) -> RegistryEntry:
    where = f"{where}, version {version!r}"
    if not isinstance(fields, dict):
        raise RegistryError(f"{where}: expected a mapping of {', '.join(VERSION_FIELDS)}")
    for field, kind in VERSION_FIELDS.items():
        if not isinstance(fields.get(field), kind):
            raise RegistryError(f"{where}: field {field!r} must be a {kind.__name__}, got {fields.get(field)!r}")
    if not SHA256.match(fields["sha256"]):
        raise RegistryError(f"{where}: field 'sha256' must be 64 lower-case hex digits, got {fields['sha256']!r}")
    url = fields["url"]
    if "://" not in url:  # relative to the registry file
        url = str((path.parent / url).resolve())
    values = {k: fields[k] for k in VERSION_FIELDS}
    return RegistryEntry(name=name, version=version, **{**values, "url": url}, is_default=False)
