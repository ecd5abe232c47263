"""Safe unpacking: crafted archives are refused, through the library and through `annotate`."""

from __future__ import annotations

import stat
import zipfile

import pytest

from runner.archive import safe_extract
from runner.errors import ModelError
from tests.conftest import assert_cache_clean, run_cli


def crafted(path, entries: dict[str, bytes], link: str | None = None):
    """A zip with an MLmodel and ``entries``; ``link`` adds a symlink entry pointing there."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("MLmodel", "flavors: {}\n")
        for name, data in entries.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo("artifacts/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, link)
    return path


CASES = {
    "absolute path": ({"/tmp/evil.py": b"x"}, None, "unsafe entry path '/tmp/evil.py'"),
    "parent path": ({"code/../../evil.py": b"x"}, None, "unsafe entry path 'code/../../evil.py'"),
    "windows path": ({"code\\..\\evil.py": b"x"}, None, "unsafe entry path"),
    "symlink": ({}, "/etc/passwd", "is a link"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unsafe_entries_are_refused(case, tmp_path):
    entries, link, message = CASES[case]
    archive = crafted(tmp_path / "evil.zip", entries, link)
    with pytest.raises(ModelError, match=message):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "evil.py").exists()


def test_zip_bomb_is_refused_by_its_unpacked_size(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("MLmodel", "flavors: {}\n")
        zf.writestr("artifacts/zeros", b"\0" * 5_000_000)
    assert archive.stat().st_size < 20_000
    with pytest.raises(ModelError, match="unpacks to more than 1000000 bytes"):
        safe_extract(archive, tmp_path / "out", max_bytes=1_000_000)
    assert not (tmp_path / "out").exists()


def test_annotate_refuses_a_crafted_archive_and_caches_nothing(tmp_path, model_cache, example_copy):
    archive = crafted(tmp_path / "evil.zip", {"code/../../evil.py": b"import os"})
    untrusted = run_cli("annotate", str(example_copy), "-m", str(archive))
    assert untrusted.returncode == 2 and "in no registry" in untrusted.stderr and "--trust" in untrusted.stderr
    trusted = run_cli("annotate", str(example_copy), "-m", str(archive), "--trust")
    assert trusted.returncode == 1 and "unsafe entry path" in trusted.stderr and "Traceback" not in trusted.stderr
    assert_cache_clean(model_cache)
    not_zip = tmp_path / "table.zip"
    not_zip.write_text("gene,cell\n")
    done = run_cli("annotate", str(example_copy), "-m", str(not_zip), "--trust")
    assert done.returncode == 1 and "is not a zip archive" in done.stderr
    assert_cache_clean(model_cache)
