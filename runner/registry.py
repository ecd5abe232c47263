"""Model registries: schema, validation, layering, name[@version] lookup, and adding entries.

Schema (``schema_version: 1``)::

    schema_version: 1
    models:
      NAME:                            # letters, digits, '.', '_', '-'; starts with a letter or digit
        default: VERSION               # the version `-m NAME` resolves to; one of `versions`
        versions:
          VERSION:                     # a string: quote versions YAML would read as numbers ("1.10")
            url: models/NAME-VERSION.zip   # relative to the registry file, or file:// / http(s)://
            sha256: <64 hex>               # of the archive; a mismatch is refused
            size: <bytes>                  # of the archive
            family: linear | scanvi | xgboost
            species: human | mouse
            tissue: <text>
            description: <text>

Every field is required; unknown fields are refused (a typo must not pass silently), and so are a key
written twice, YAML anchors and aliases (``&a`` / ``*a``: a registry needs none, and they make a small
file expand without bound), nesting deeper than :data:`MAX_NESTING` and a file that is not UTF-8 text.
Errors name the file, the line, the model, the version and the field.

Layering: the zoo's ``registry.yaml`` (or ``$CELLZOO_REGISTRY``, which replaces it) comes first, then
the files of ``$CELLZOO_REGISTRIES`` (a path list, separated like ``$PATH``), then ``--registry``
options, in order. A later file's name shadows an earlier one's whole model, with a warning.
Every registry entry is trusted: its archive is pinned by sha256.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runner.errors import RegistryError, UsageError
from runner.files import atomic_path

logger = logging.getLogger(__name__)

REGISTRY_ENV = "CELLZOO_REGISTRY"
USER_REGISTRIES_ENV = "CELLZOO_REGISTRIES"
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
MAX_NESTING = 8  # a registry is 5 levels deep (models, NAME, versions, VERSION, field)
SHA256 = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VERSION = re.compile(r"^[A-Za-z0-9_.+-]+$")


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
    source: Path = Path()  # the registry file it came from

    @property
    def pinned_reference(self) -> str:
        """The string to cite: resolves to exactly these bytes, with or without the registry."""
        return f"{self.url}#sha256={self.sha256}"


@dataclass(frozen=True)
class Registry:
    """One registry file, or several layered into one (``path`` is then the last file)."""

    path: Path
    entries: dict[str, dict[str, RegistryEntry]]  # name -> version -> entry
    defaults: dict[str, str]
    files: tuple[Path, ...] = field(default=())

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str, version: str | None = None) -> RegistryEntry:
        """The entry of ``name`` at ``version`` (default: the model's default version).

        Raises
        ------
        UsageError
            For an unknown name (listing the names and the closest one) or version (listing versions).
        """
        if name not in self.entries:
            unbuilt = unbuilt_recipe(name)
            if unbuilt is not None:
                raise UsageError(unbuilt)
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = ", ".join(str(f) for f in self.files or (self.path,))
            raise UsageError(f"unknown model {name!r}; the registry ({where}) has: {', '.join(self.names())}.{hint}")
        versions = self.entries[name]
        version = version or self.defaults[name]
        if version not in versions:
            raise UsageError(f"model {name!r} has no version {version!r}; versions: {', '.join(sorted(versions))}")
        return versions[version]

    def by_sha256(self, sha256: str) -> RegistryEntry | None:
        """The entry whose archive hashes to ``sha256``, if any (a registered archive is trusted)."""
        return next((e for vs in self.entries.values() for e in vs.values() if e.sha256 == sha256), None)

    def all_entries(self) -> list[RegistryEntry]:
        return [self.entries[n][v] for n in self.names() for v in sorted(self.entries[n])]


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
    files = [f if isinstance(f, str) else f.get("file", "") for f in ref.get("files") or ["REFERENCE.h5ad"]]
    references = " ".join(f"--reference {f}" for f in files)
    source = ref.get("source_url") or "see the recipe"
    target = f"build/{name}-{recipe.get('version', 'VERSION')}"
    return (
        f"model {name!r} is a zoo recipe ({path}) that has not been built: its reference cannot be shipped, "
        f"so the registry has no entry for it. Download the reference ({source}), build the model with "
        f"`cellzoo build {name} {references} --out build`, then annotate with `-m {target}`."
    )


def registry_path() -> Path:
    """The base registry: ``$CELLZOO_REGISTRY``, else the zoo's ``registry.yaml``."""
    return Path(os.environ.get(REGISTRY_ENV) or ZOO_REGISTRY).expanduser()


def registry_files(extra: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """The registry files in layering order: base, ``$CELLZOO_REGISTRIES``, then ``extra``."""
    users = [Path(p).expanduser() for p in os.environ.get(USER_REGISTRIES_ENV, "").split(os.pathsep) if p]
    return [registry_path(), *users, *(Path(p).expanduser() for p in extra)]


def load_registries(extra: list[Path] | tuple[Path, ...] = ()) -> Registry:
    """Every registry file (see :func:`registry_files`) layered into one; later names shadow earlier."""
    files = registry_files(extra)
    merged = load_registry(files[0])
    entries, defaults = dict(merged.entries), dict(merged.defaults)
    origin = dict.fromkeys(entries, files[0])
    for path in files[1:]:
        layer = load_registry(path)
        for name in layer.names():
            if name in entries:
                logger.warning("warning: model %r of registry %s shadows the one of %s", name, path, origin[name])
            entries[name], defaults[name], origin[name] = layer.entries[name], layer.defaults[name], path
    return Registry(path=files[-1], entries=entries, defaults=defaults, files=tuple(files))


def load_registry(path: Path | None = None) -> Registry:
    """Read and validate one registry file; errors name the file, line, entry and field.

    Raises
    ------
    RegistryError
        The file is missing, is not YAML, or does not follow the schema in this module's docstring.
    """
    import yaml

    path = path or registry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise RegistryError(f"registry file {path} does not exist (set ${REGISTRY_ENV} to another)") from err
    except (OSError, UnicodeDecodeError) as err:
        raise RegistryError(f"registry file {path} cannot be read as UTF-8 text: {err}") from err
    try:
        _check_structure(path, text)
        root = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RegistryError(f"{where}: registry is not valid YAML: {err}") from err
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise RegistryError(f"{path}: registry holds a value that cannot be read: {err}") from err
    lines = _Lines(path, root)
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        raise RegistryError(f"{lines.at()}: expected 'schema_version: {SCHEMA_VERSION}' at the top")
    if not isinstance(doc.get("models"), dict):
        raise RegistryError(f"{lines.at('models')}: expected a 'models' mapping of model names")
    entries: dict[str, dict[str, RegistryEntry]] = {}
    defaults: dict[str, str] = {}
    for name, spec in doc["models"].items():
        where = f"{lines.at('models', name)}: model {name!r}"
        if not isinstance(name, str) or not NAME.match(name):
            raise RegistryError(f"{where}: a name is letters, digits, '.', '_' or '-'")
        if not isinstance(spec, dict) or not isinstance(spec.get("versions"), dict) or not spec["versions"]:
            raise RegistryError(f"{where}: needs a non-empty 'versions' mapping")
        extra = set(spec) - {"default", "versions"}
        if extra:
            raise RegistryError(f"{where}: unknown field(s) {sorted(extra)}; a model has 'default' and 'versions'")
        versions = {version: _entry(lines, path, name, version, fields) for version, fields in spec["versions"].items()}
        default = spec.get("default")
        if str(default) not in versions:
            raise RegistryError(
                f"{lines.at('models', name, 'default')}: model {name!r}: field 'default' {default!r} "
                f"is not one of its versions {sorted(versions)}"
            )
        entries[name] = {v: replace(e, is_default=v == str(default)) for v, e in versions.items()}
        defaults[name] = str(default)
    return Registry(path=path, entries=entries, defaults=defaults, files=(path,))


def _check_structure(path: Path, text: str) -> None:
    """Refuse, from the YAML events (read without building anything), anchors and aliases, nesting deeper
    than :data:`MAX_NESTING`, keys that are not plain values and keys written twice in one mapping."""
    import yaml

    open_nodes: list[dict | None] = []  # per open mapping: the keys seen and whether a key comes next
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = f"{path}:{event.start_mark.line + 1}"
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise RegistryError(f"{line}: YAML anchors and aliases (&NAME, *NAME) are not allowed in a registry")
        if isinstance(event, yaml.CollectionEndEvent):
            open_nodes.pop()
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue
        mapping = open_nodes[-1] if open_nodes else None
        if mapping is not None:
            if mapping["key"] and not isinstance(event, yaml.ScalarEvent):
                raise RegistryError(f"{line}: a key must be a plain name, not a list or mapping")
            if mapping["key"] and event.value in mapping["seen"]:
                raise RegistryError(f"{line}: the key {event.value[:80]!r} is written twice; keep one")
            if mapping["key"]:
                mapping["seen"].add(event.value)
            mapping["key"] = not mapping["key"]
        if isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append({"seen": set(), "key": True} if isinstance(event, yaml.MappingStartEvent) else None)
            if len(open_nodes) > MAX_NESTING:
                raise RegistryError(f"{line}: nested more than {MAX_NESTING} levels deep; a registry needs 5")


def _entry(lines: _Lines, path: Path, name: str, version: Any, fields: Any) -> RegistryEntry:
    where = f"model {name!r}, version {version!r}"
    if not isinstance(version, str) or not VERSION.match(version):
        raise RegistryError(
            f"{lines.at('models', name, 'versions', version)}: {where}: a version must be a string of letters, "
            "digits, '.', '_', '+' or '-' (quote it: YAML reads 1.10 as the number 1.1)"
        )
    if not isinstance(fields, dict):
        raise RegistryError(
            f"{lines.at('models', name, 'versions', version)}: {where}: expected a mapping of "
            f"{', '.join(VERSION_FIELDS)}"
        )
    for key in fields:
        if key not in VERSION_FIELDS:
            raise RegistryError(
                f"{lines.at('models', name, 'versions', version, key)}: {where}: unknown field {key!r}; "
                f"the fields are {', '.join(VERSION_FIELDS)}"
            )
    for key, kind in VERSION_FIELDS.items():
        value = fields.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            line = lines.at("models", name, "versions", version, key)
            raise RegistryError(f"{line}: {where}: field {key!r} must be a {kind.__name__}, got {value!r}")
    if not SHA256.match(fields["sha256"]):
        line = lines.at("models", name, "versions", version, "sha256")
        raise RegistryError(
            f"{line}: {where}: field 'sha256' must be 64 lower-case hex digits, got {fields['sha256']!r}"
        )
    values = {k: fields[k] for k in VERSION_FIELDS}
    values["url"] = absolute_url(path, fields["url"])
    return RegistryEntry(name=name, version=version, **values, is_default=False, source=path)


def absolute_url(registry: Path, url: str) -> str:
    """``url`` as written in ``registry``: a relative path becomes a ``file://`` URI beside the file."""
    if "://" in url:
        return url
    return (registry.parent / url).resolve().as_uri()


class _Lines:
    """Line numbers of the nodes of a YAML document, for error messages (``FILE:LINE``)."""

    def __init__(self, path: Path, root: Any) -> None:
        self.path = path
        self.root = root

    def at(self, *keys: Any) -> str:
        """``FILE:LINE`` of the deepest node along ``keys`` that exists (line 1 when none does)."""
        import yaml

        node, line = self.root, 1
        for key in keys:
            if not isinstance(node, yaml.MappingNode):
                break
            match = next((pair for pair in node.value if _same_key(pair[0].value, key)), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        return f"{self.path}:{line}"


def _same_key(text: str, key: Any) -> bool:
    """Whether a key node's text is ``key`` (a number key like 1.10 is read as YAML reads it)."""
    import yaml

    return text == key or (not isinstance(key, str) and yaml.safe_load(text) == key)


def add_version(path: Path, entry: dict[str, Any], *, name: str, version: str, make_default: bool) -> bool:
    """Add ``name@version`` with the fields ``entry`` to the registry file ``path`` (created if absent).

    The file is validated before and after, and written to a temporary file that is renamed into
    place. Comment lines at the top of the file are kept; other comments are not.

    Returns
    -------
    bool
        ``True`` if the entry was added, ``False`` if the same entry (same sha256) was already there.

    Raises
    ------
    UsageError
        ``name@version`` exists with another archive: a published version never changes.
    """
    import yaml

    if not NAME.match(name) or not VERSION.match(version):
        raise UsageError(f"invalid name {name!r} or version {version!r}: use letters, digits, '.', '_', '-'")
    header = ""
    if path.exists():
        existing = load_registry(path)
        if version in existing.entries.get(name, {}):
            old = existing.entries[name][version]
            if old.sha256 == entry["sha256"]:
                return False
            raise UsageError(
                f"{name}@{version} is already in {path} with sha256 {old.sha256}; a published version never "
                f"changes (the new archive is {entry['sha256']}): register it as a new version"
            )
        text = path.read_text()
        header = "".join(line for line in _leading_comments(text))
        doc = yaml.safe_load(text)
    else:
        header = f"# cellzoo model registry. Schema: {__name__} (validated on load).\n"
        doc = {"schema_version": SCHEMA_VERSION, "models": {}}
    model = doc["models"].setdefault(name, {"default": version, "versions": {}})  # a new name: its default
    model["versions"][version] = {k: entry[k] for k in VERSION_FIELDS}
    if make_default:
        model["default"] = version
    with atomic_path(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=100))
        load_registry(tmp)
    return True


def _leading_comments(text: str) -> list[str]:
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


@dataclass(frozen=True)
class Registered:
    """What ``register_model`` did: the entry's fields, the archive it wrote, and whether it was new."""

    name: str
    version: str
    archive: Path
    registry: Path
    fields: dict[str, Any]
    added: bool


def register_model(
    model_dir: Path,
    *,
    name: str,
    version: str,
    registry: Path,
    url_base: str | None = None,
    make_default: bool = False,
) -> Registered:
    """Pack ``model_dir`` into a deterministic zip and add it to the registry file ``registry``.

    The archive goes to ``models/NAME-VERSION.zip`` beside the registry file; the entry's url is that
    relative path, or ``URL_BASE/NAME-VERSION.zip`` when ``url_base`` says where it will be served.
    family, species, tissue and description come from the MLmodel ``metadata`` ("unknown" if absent).
    The first version of a name becomes its default; later ones only with ``make_default``.

    Raises
    ------
    UsageError
        ``name@version`` is already registered with other bytes.
    ModelError
        ``model_dir`` is not an MLflow model directory.
    """
    import yaml

    from runner.archive import pack_model_dir

    archive = registry.parent / "models" / f"{name}-{version}.zip"
    with atomic_path(archive) as packed:  # the archive appears only once its entry is in the registry
        sha256, size = pack_model_dir(model_dir, packed)
        metadata = (yaml.safe_load((model_dir / "MLmodel").read_text()) or {}).get("metadata") or {}
        url = f"{url_base.rstrip('/')}/{archive.name}" if url_base else f"models/{archive.name}"
        fields: dict[str, Any] = {"url": url, "sha256": sha256, "size": size}
        for key in ("family", "species", "tissue"):
            fields[key] = str(metadata.get(key) or "unknown")
        fields["description"] = str(metadata.get("description") or f"{name} {version}")
        added = add_version(registry, fields, name=name, version=version, make_default=make_default)
    return Registered(name=name, version=version, archive=archive, registry=registry, fields=fields, added=added)
