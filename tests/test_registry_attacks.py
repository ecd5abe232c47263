"""Hostile registry files (issue 17, item 18): each refused with one RegistryError naming the file, quickly."""

from __future__ import annotations

import time

import pytest

from runner.errors import RegistryError
from runner.registry import load_registry
from tests import corpus
from tests.conftest import PBMC_ARCHIVE, assert_one_line_error, expect_clean, run_cli, sha256


@pytest.mark.parametrize("name", corpus.REGISTRIES)
def test_a_hostile_registry_is_refused(name, tmp_path):
    path = corpus.write_registry(tmp_path, name, sha256(PBMC_ARCHIVE))
    start = time.monotonic()
    error = expect_clean(lambda: load_registry(path))
    assert isinstance(error, RegistryError) and str(path) in str(error), name
    assert time.monotonic() - start < 5  # the billion laughs is refused, not expanded
    assert len(str(error)) < 1000


def test_the_cli_says_it_in_one_line(tmp_path):
    path = corpus.write_registry(tmp_path, "billion laughs", sha256(PBMC_ARCHIVE))
    assert_one_line_error(run_cli("cellzoo", "models", "list", "--registry", str(path)), 1, "anchors and aliases")
