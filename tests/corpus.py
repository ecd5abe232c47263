"""The adversarial corpus of issue 17: every case is generated here, by code, at test time (no committed binaries).

Each group maps a case name to what builds it; the tests of each area run every case and require either
correct behaviour or one :class:`runner.errors.CellzooError` (from the CLI: one line on stderr, exit 1 or
2), never another exception. :func:`count` is the number of cases, stated in the README's "Reliability".
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from runner.errors import InputError, UsageError
from tests.conftest import EXAMPLE, PBMC_ARCHIVE, PBMC_VERSION

BASE_CELLS = 60  # cells of the bundled example in the small h5ad every input case starts from


# --- inputs (items 16, 17): a small real h5ad, damaged with h5py --------------------------------------------


@functools.cache
def _base_bytes() -> bytes:
    import anndata as ad

    with tempfile.TemporaryDirectory() as tmp:
        ad.read_h5ad(EXAMPLE)[:BASE_CELLS].copy().write_h5ad(Path(tmp) / "base.h5ad")
        return (Path(tmp) / "base.h5ad").read_bytes()


def base_h5ad(path: Path) -> Path:
    """The first cells of the bundled example (raw counts, CSR), written as an h5ad (built once per session)."""
    path.write_bytes(_base_bytes())
    return path


def _csr(f) -> h5py.Group:
    return f["X"]


def _replace(group, name: str, values) -> None:
    del group[name]
    group.create_dataset(name, data=values)


def _negative_index(f) -> None:
    indices = _csr(f)["indices"]
    indices[3] = -1


def _index_out_of_range(f) -> None:
    indices = _csr(f)["indices"]
    indices[3] = _csr(f).attrs["shape"][1] + 7


def _indptr_past_data(f) -> None:
    indptr = _csr(f)["indptr"][()]
    indptr[-1] += 50
    _replace(_csr(f), "indptr", indptr)


def _indptr_decreasing(f) -> None:
    indptr = _csr(f)["indptr"][()]
    indptr[10], indptr[11] = indptr[11], indptr[10]
    _replace(_csr(f), "indptr", indptr)


def _shape_attribute(f) -> None:
    n_cells, n_genes = _csr(f).attrs["shape"]
    _csr(f).attrs["shape"] = np.array([n_cells, n_genes + 5])


def _var_longer(f) -> None:
    names = f["var/_index"][()]
    del f["var/_index"]
    f["var"].create_dataset(
        "_index", data=np.concatenate([names, [b"EXTRA1", b"EXTRA2"]]).astype(object), dtype=h5py.string_dtype()
    )
    f["var/_index"].attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})


def _obs(f, n: int) -> None:
    names = f["obs/_index"][()]
    names = (
        names[:n] if n <= len(names) else np.concatenate([names, [f"extra{i}".encode() for i in range(n - len(names))]])
    )
    del f["obs/_index"]
    f["obs"].create_dataset("_index", data=names.astype(object), dtype=h5py.string_dtype())
    f["obs/_index"].attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})


def _layer_shape(f) -> None:
    f.copy(f["X"], "layers/counts")
    n_cells, n_genes = f["layers/counts"].attrs["shape"]
    f["layers/counts"].attrs["shape"] = np.array([n_cells, n_genes - 3])


def _huge_counts(f) -> None:
    data = _csr(f)["data"][()].astype(np.uint64)
    data[: len(data) // 2] = np.uint64(2**63)
    _replace(_csr(f), "data", data)


def _complex_values(f) -> None:
    data = _csr(f)["data"][()].astype(np.complex64) + 1j
    _replace(_csr(f), "data", data)


def _string_data(f) -> None:
    data = _csr(f)["data"][()].astype("S4")
    _replace(_csr(f), "data", data)


def _dense(f, values: Callable[[np.ndarray], np.ndarray]) -> None:
    import scipy.sparse as sp

    group = _csr(f)
    matrix = sp.csr_matrix(
        (group["data"][()], group["indices"][()], group["indptr"][()]), shape=tuple(group.attrs["shape"])
    ).toarray()
    del f["X"]
    f.create_dataset("X", data=values(matrix))
    f["X"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


def _no_x(f) -> None:
    del f["X"]


def _unknown_encoding(f) -> None:
    _csr(f).attrs["encoding-type"] = "fancy_matrix"


def _cyclic_soft_link(f) -> None:
    del f["X"]
    f["X"] = h5py.SoftLink("/Y")
    f["Y"] = h5py.SoftLink("/X")


def _external_link(f) -> None:
    other = Path(f.filename).with_name("elsewhere.h5ad")
    base_h5ad(other)
    with h5py.File(other, "r+") as g:
        g["X/data"][:] = 1  # another matrix: annotating with it would be wrong
    del f["X"]
    f["X"] = h5py.ExternalLink(other.name, "/X")


# name -> (what damages the base file, whether it must be refused). Each runs in memory and --backed.
INPUTS: dict[str, tuple[Callable, bool]] = {
    "negative CSR index": (_negative_index, True),
    "CSR index past the genes": (_index_out_of_range, True),
    "indptr past the data": (_indptr_past_data, True),
    "indptr decreasing": (_indptr_decreasing, True),
    "shape attribute disagrees": (_shape_attribute, True),
    "var longer than X": (_var_longer, True),
    "obs shorter than X": (lambda f: _obs(f, BASE_CELLS - 7), True),
    "obs longer than X": (lambda f: _obs(f, BASE_CELLS + 7), True),
    "uint64 counts of 2**63": (_huge_counts, False),
    "complex values": (_complex_values, True),
    "string values": (_string_data, True),
    "dense float16 X": (lambda f: _dense(f, lambda m: m.astype(np.float16)), False),
    "dense string X": (lambda f: _dense(f, lambda m: m.astype("S3")), True),
    "no X": (_no_x, True),
    "unknown encoding type": (_unknown_encoding, True),
    "cyclic soft link": (_cyclic_soft_link, True),
    "external link to another file": (_external_link, True),
}
LAYER_CASES = {"layer shape disagrees": _layer_shape}  # run with --counts-layer counts


def damaged_h5ad(folder: Path, damage: Callable) -> Path:
    path = base_h5ad(folder / "query.h5ad")
    with h5py.File(path, "r+") as f:
        damage(f)
    return path


# --- outputs (items 8, 14, 15): misuses of -o, --table and --key-added; each returns (input, options, error) ---


def _late_damage(query: Path) -> Path:
    """A copy of ``query`` whose 46th cell has a negative gene index: a streamed run fails in a late block."""
    path = base_h5ad(query.with_name("late.h5ad"))
    with h5py.File(path, "r+") as f:
        f["X/indices"][f["X/indptr"][45]] = -1
    return path


def _linked(query: Path, name: str, hard: bool) -> Path:
    link = query.with_name(name)
    os.link(query, link) if hard else link.symlink_to(query)
    return link


def _table_is_a_folder(query: Path, backed: bool = False) -> tuple[Path, dict, type]:
    (query.parent / "t.csv").mkdir()
    options = {"output": query.with_name("o.h5ad"), "table": query.parent / "t.csv", "overwrite": True}
    return query, {**options, "backed": backed}, UsageError  # refused before the run, no longer after it


def _option(name: str, value) -> Callable[[Path], tuple[Path, dict, type]]:
    """An option refused before the run (bad usage)."""
    return lambda query: (query, {"output": query.with_name("o.h5ad"), name: value}, UsageError)


def _output_is_a_pipe(query: Path) -> tuple[Path, dict, type]:
    """As ``-o /dev/null --overwrite`` run by root, which replaced the device with a file."""
    os.mkfifo(query.with_name("p.h5ad"))
    return query, {"output": query.with_name("p.h5ad"), "overwrite": True}, UsageError


def _output_below_a_file(query: Path) -> tuple[Path, dict, type]:
    query.with_name("afile").write_bytes(b"a user's file")
    return query, {"output": query.parent / "afile" / "o.h5ad"}, UsageError


def _input_named_like_a_temporary_output(query: Path) -> tuple[Path, dict, type]:
    """The input named as a killed run's temporary file of -o would be (a PID above Linux's pid_max: no process):
    the sweep of leftovers before the write would have deleted it."""
    from runner.files import owner_tag

    host = owner_tag().partition("@")[2]
    named = query.with_name(f".o.h5ad.{2**22 + 1}@{host}.abcd.tmp")
    shutil.copy(query, named)
    return named, {"output": query.with_name("o.h5ad")}, UsageError


def _existing_output(query: Path) -> tuple[Path, dict, type]:
    query.with_name("o.h5ad").write_bytes(b"a user's earlier result")
    return query, {"output": query.with_name("o.h5ad")}, UsageError


OUTPUT_MISUSES: dict[str, Callable[[Path], tuple[Path, dict, type]]] = {
    "--table is the input": lambda q: (
        _linked(q, "in.csv", hard=True),
        {"table": q.with_name("in.csv"), "output": q.with_name("o.h5ad"), "overwrite": True},
        UsageError,
    ),
    "-o is the input by a symbolic link": lambda q: (
        q,
        {"output": _linked(q, "link.h5ad", hard=False), "overwrite": True},
        UsageError,
    ),
    "-o is the input by a hard link": lambda q: (q, {"output": _linked(q, "hard.h5ad", hard=True)}, UsageError),
    "-o and --table one path": lambda q: (
        q,
        {"output": q.with_name("x.csv"), "table": q.with_name("x.csv")},
        UsageError,
    ),
    "--key-added with a slash": lambda q: (q, {"output": q.with_name("o.h5ad"), "key_added": "a/b"}, UsageError),
    "--key-added empty": lambda q: (q, {"output": q.with_name("o.h5ad"), "key_added": ""}, UsageError),
    "--key-added '.' (HDF5's own group)": _option("key_added", "."),
    "--batch-size past an HDF5 integer": _option("batch_size", 2**64),
    "-o a pipe, with --overwrite": _output_is_a_pipe,
    "-o a folder, with --overwrite": lambda q: (q, {"output": q.parent, "overwrite": True}, UsageError),
    "-o below a file": _output_below_a_file,
    "-o a name too long for the file system": lambda q: (q, {"output": q.with_name("x" * 300 + ".h5ad")}, UsageError),
    "-o a name that fits, but not its temporary file's": lambda q: (
        q,
        {"output": q.with_name("x" * 240 + ".h5ad")},
        UsageError,
    ),
    "the input named like a temporary file of -o": _input_named_like_a_temporary_output,
    "--table into a folder of that name": _table_is_a_folder,
    "--table into a folder of that name, streamed": lambda q: _table_is_a_folder(q, backed=True),
    "an existing output without --overwrite": _existing_output,
    "a streamed run failing late, into new folders": lambda q: (
        _late_damage(q),
        {"output": q.parent / "new" / "deeper" / "o.h5ad", "backed": True, "batch_size": 10},
        InputError,
    ),
}
# runs stopped or starved from outside (tests/test_signals_outputs.py), by name
PROCESS_CASES = [
    "four concurrent runs to one -o",
    "SIGTERM during a streamed run",
    "kill -9, then the next run",
    "SIGINT swallowed by a library",
    "full disk, in memory",
    "full disk, streamed",
    "SIGTERM during a download",
    "kill -9 during a download",
    "cache clean during a download",
]


# --- trust (items 1-3): lookalikes of registry names beside the run, and tamperings of a cached model ---------

LOOKALIKES = [
    ("pbmc", "folder"),
    (f"pbmc@{PBMC_VERSION}", "folder"),
    ("pbmc", "file"),
    ("pbmc-scanvi", "file"),
    ("mymodel", "folder"),  # no registry model of that name: still refused, pointing to ./mymodel
]


def _edited_code(folder: Path, archive: Path) -> None:
    with open(folder / "model_code.py", "a") as fh:
        fh.write("\nimport os; os.system('echo pwned')\n")


def _planted_pyc(folder: Path, archive: Path) -> None:
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "model_code.cpython-311.pyc").write_bytes(b"\xa7\r\r\n" + bytes(12) + b"evil")


def _added_file(folder: Path, archive: Path) -> None:
    (folder / "code" / "sitecustomize.py").write_text("print('pwned')\n")


def _removed_file(folder: Path, archive: Path) -> None:
    (folder / "artifacts" / "labels.json").unlink()


def _symlinked_file(folder: Path, archive: Path) -> None:
    target = folder.parent / "elsewhere.md"
    shutil.move(folder / "README.md", target)
    (folder / "README.md").symlink_to(target)


def _forged_folder(folder: Path, archive: Path) -> None:
    shutil.rmtree(folder)
    with zipfile.ZipFile(PBMC_ARCHIVE.with_name("lung-cell-lines-1.0.0.zip")) as zf:
        zf.extractall(folder)


def _forged_folder_and_archive(folder: Path, archive: Path) -> None:
    _forged_folder(folder, archive)
    shutil.copy(PBMC_ARCHIVE.with_name("lung-cell-lines-1.0.0.zip"), archive)


def _forged_folder_alone(folder: Path, archive: Path) -> None:
    _forged_folder(folder, archive)
    archive.unlink()


TAMPERINGS = [
    _edited_code,
    _planted_pyc,
    _added_file,
    _removed_file,
    _symlinked_file,
    _forged_folder,
    _forged_folder_and_archive,
    _forged_folder_alone,
]


# --- model archives (item 10) -------------------------------------------------------------------------------


def _zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _model_entries() -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(PBMC_ARCHIVE) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _tar_model(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in _model_entries():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _duplicate_entry(path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name: that is the attack
        return _zip(path, [*_model_entries(), ("MLmodel", b"flavors: {}\n")])


def _deep_entry(path: Path) -> Path:
    return _zip(path, [*_model_entries(), ("/".join(["d"] * 3000) + "/f.txt", b"x")])


def _symlink_entry(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in _model_entries():
            zf.writestr(name, data)
        info = zipfile.ZipInfo("artifacts/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return path


ARCHIVES: dict[str, Callable[[Path], Path]] = {
    "tar.gz model archive": _tar_model,
    "zip with an entry twice": _duplicate_entry,
    "entry 3,000 folders deep": _deep_entry,
    "symbolic link entry": _symlink_entry,
    "zip-slip entry": lambda p: _zip(p, [*_model_entries(), ("../escape.txt", b"x")]),
    "absolute entry": lambda p: _zip(p, [*_model_entries(), ("/tmp/abs.txt", b"x")]),
    "truncated zip": lambda p: p.write_bytes(PBMC_ARCHIVE.read_bytes()[:5000]) and p,
    "no MLmodel": lambda p: _zip(p, [("README.md", b"hello")]),
}


# --- downloads (items 4, 5): behaviours of tests.servers.FaultyServer, with or without the registry's size ---

DOWNLOADS = [
    ("huge", True),
    ("huge-declared", True),
    ("short", True),
    ("short", False),
    ("bad-206", True),
    ("bad-206", False),
    ("length-abc", True),
    ("length-abc", False),
    ("two-lengths", True),
    ("two-lengths", False),
    ("bad-range-total", True),
    ("bad-range-total", False),
]
HTTP_SETTINGS = [
    ("CELLZOO_HTTP_TIMEOUT", "0"),
    ("CELLZOO_HTTP_TIMEOUT", "-1"),
    ("CELLZOO_HTTP_TIMEOUT", "nan"),
    ("CELLZOO_HTTP_TIMEOUT", "inf"),
    ("CELLZOO_HTTP_TIMEOUT", "abc"),
    ("CELLZOO_HTTP_RETRIES", "inf"),
    ("CELLZOO_HTTP_RETRIES", "-1"),
    ("CELLZOO_HTTP_RETRIES", "1.5"),
    ("CELLZOO_HTTP_RETRIES", "1000000000"),
    ("CELLZOO_HTTP_RETRIES", "\u00b3"),  # a digit to str.isdigit, not to int()
]


# --- registries (item 18) ------------------------------------------------------------------------------------

ENTRY = (
    "url: models/pbmc-1.2.0.zip\n      sha256: {sha}\n      size: 1\n      family: linear\n      species: human\n"
    "      tissue: blood\n"
)


def _registry(body: str) -> str:
    return f"schema_version: 1\nmodels:\n  mine:\n    default: '1'\n    versions:\n{body}"


def _laughs() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    body = "\n".join(lines)
    return f"{body}\n" + _registry("      '1': {description: *a9}\n")


def _registry_bytes(sha: str) -> dict[str, bytes | None]:
    """name -> the registry file's bytes (None: a folder instead of a file)."""
    good = "      '1':\n        " + ENTRY.format(sha=sha).replace("\n      ", "\n        ") + "        description: d\n"
    return {
        "billion laughs": _laughs().encode(),
        "deep nesting": ("schema_version: 1\nmodels: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
        "non-UTF-8 bytes": _registry(good).encode().replace(b"description: d", b"description: \xff\xfe"),
        "a folder as registry": None,
        "5,000-digit integer": _registry(good.replace("size: 1", "size: " + "9" * 5000)).encode(),
        "duplicate model key": (_registry(good) + "  mine:\n    default: '1'\n    versions: {}\n").encode(),
        "duplicate version field": _registry(
            good.replace("description: d", "description: d\n        size: 2")
        ).encode(),
        "YAML python tag": _registry(
            good.replace("description: d", "description: !!python/object/apply:os.system [id]")
        ).encode(),
    }


def write_registry(folder: Path, name: str, sha: str) -> Path:
    path = folder / "registry.yaml"
    content = _registry_bytes(sha)[name]
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


REGISTRIES = list(_registry_bytes("0" * 64))


# the cases tested one by one, each by a test of its own (named in it)
SINGLE_CASES = [
    "a pipe as input",  # test_input_attacks
    "a file:// URL naming a folder",  # test_trust
    "a planted .pyc that Python would load",  # test_trust
    "a user's folder as the cache",  # test_cache_safety
    "a kept archive that is not a zip",  # test_cache_safety
    "the half tree and partial archive of a killed fetch",  # test_cache_safety
    "the folder of a killed unpinned fetch",  # test_cache_safety
    "a report stopped by SIGTERM",  # test_report
    "a report folder that is a file, or holds a report",  # test_report, test_signals_outputs
    "`cellzoo report` of a truncated file",  # test_report
    "--overwrite into a folder that refuses files",  # test_signals_outputs
    "normalised cells after millions of counts",  # test_input_attacks (the rest too)
    "a zarr store with a chunk file missing",
    "a zarr store with a damaged chunk",
    "a table with repeated gene columns",
    "a tiny mtx declaring a huge matrix",
    "a 10x h5 declaring a huge shape",
    "a matrix too large for memory",
]


def count() -> int:
    """The number of adversarial cases in the corpus (the README's "Reliability" states it)."""
    inputs = 3 * (len(INPUTS) + len(LAYER_CASES))  # each in memory, streamed, and by `cellzoo inspect`
    groups = (LOOKALIKES, TAMPERINGS, DOWNLOADS, HTTP_SETTINGS, ARCHIVES, REGISTRIES, OUTPUT_MISUSES, PROCESS_CASES)
    return inputs + sum(len(group) for group in groups) + len(SINGLE_CASES)
