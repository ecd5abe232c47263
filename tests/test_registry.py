"""Registry files: validation with line numbers, layering user registries, `cellzoo register`."""

from __future__ import annotations

import zipfile

import pytest
import yaml

from tests.conftest import PBMC_ARCHIVE, PBMC_VERSION, assert_cache_clean, run_cli, sha256

PBMC_SHA = sha256(PBMC_ARCHIVE)
GOOD = f"""schema_version: 1
models:
  mine:
    default: 1.0.0
    versions:
      1.0.0:
        url: {PBMC_ARCHIVE.as_uri()}
        sha256: {PBMC_SHA}
        size: {PBMC_ARCHIVE.stat().st_size}
        family: linear
        species: human
        tissue: blood
        description: the zoo's pbmc under another name
"""
MALFORMED = {  # what to break -> (line named in the error, words of the message)
    "yaml syntax": (("tissue: blood", "tissue: [blood"), 13, "not valid YAML"),
    "unknown field": (("        size:", "        sizes:"), 9, "unknown field 'sizes'"),
    "missing field": (("        tissue: blood\n", ""), 6, "field 'tissue' must be a str, got None"),
    "bad sha256": ((PBMC_SHA, "abc"), 8, "field 'sha256' must be 64 lower-case hex"),
    "wrong type": (("family: linear", "family: [linear]"), 10, "field 'family' must be a str"),
    "number version": (("      1.0.0:", "      1.10:"), 6, "quote it"),
    "bad default": (("default: 1.0.0", "default: 2.0.0"), 4, "field 'default' '2.0.0' is not one of its versions"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_registry_names_file_line_entry_and_field(case, tmp_path, model_cache, example_copy):
    (old, new), line, message = MALFORMED[case]
    registry = tmp_path / "mine.yaml"
    registry.write_text(GOOD.replace(old, new))
    listed = run_cli("cellzoo", "models", "list", "--registry", str(registry))
    assert listed.returncode == 1 and "Traceback" not in listed.stderr
    assert f"{registry}:{line}" in listed.stderr and message in listed.stderr, listed.stderr
    if case != "yaml syntax":
        assert "model 'mine'" in listed.stderr
    done = run_cli("annotate", str(example_copy), "-m", "mine", "--registry", str(registry))
    assert done.returncode == 1 and message in done.stderr
    assert_cache_clean(model_cache)


def test_user_registries_layer_over_the_zoo_and_shadow_with_a_warning(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(GOOD)
    shadow = tmp_path / "shadow.yaml"
    shadow.write_text(GOOD.replace("  mine:", "  pbmc:"))
    listed = run_cli("cellzoo", "models", "list", env={"CELLZOO_REGISTRIES": f"{mine}:{shadow}"})
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["mine"] == ["mine", "1.0.0", "human", "blood", "linear", "no"]
    assert "pbmc" in rows and "model 'pbmc' of registry" in listed.stderr and "shadows" in listed.stderr
    plain = run_cli("cellzoo", "models", "list", "--registry", str(mine))
    assert plain.returncode == 0 and "shadows" not in plain.stderr


def test_register_packs_deterministically_and_never_changes_a_version(tmp_path, model_cache):
    model_dir = tmp_path / "model"
    with zipfile.ZipFile(PBMC_ARCHIVE) as zf:
        zf.extractall(model_dir)
    registry = tmp_path / "lab" / "registry.yaml"
    done = run_cli(
        "cellzoo", "register", str(model_dir), "--name", "labpbmc", "--version", "1.0.0", "--registry", str(registry)
    )
    assert done.returncode == 0, done.stderr
    # the same content packs to the same bytes as the zoo's archive of it
    assert sha256(tmp_path / "lab" / "models" / "labpbmc-1.0.0.zip") == PBMC_SHA
    doc = yaml.safe_load(registry.read_text())
    entry = doc["models"]["labpbmc"]["versions"]["1.0.0"]
    assert entry["url"] == "models/labpbmc-1.0.0.zip" and entry["sha256"] == PBMC_SHA and entry["family"] == "linear"
    assert doc["models"]["labpbmc"]["default"] == "1.0.0"
    same = run_cli(
        "cellzoo", "register", str(model_dir), "--name", "labpbmc", "--version", "1.0.0", "--registry", str(registry)
    )
    assert same.returncode == 0 and "unchanged" in same.stdout
    before = registry.read_text()
    (model_dir / "README.md").write_text("changed")
    changed = run_cli(
        "cellzoo", "register", str(model_dir), "--name", "labpbmc", "--version", "1.0.0", "--registry", str(registry)
    )
    assert changed.returncode == 2 and "never changes" in changed.stderr and PBMC_SHA in changed.stderr
    assert registry.read_text() == before and sha256(tmp_path / "lab" / "models" / "labpbmc-1.0.0.zip") == PBMC_SHA
    served = run_cli(
        "cellzoo",
        "register",
        str(model_dir),
        "--name",
        "labpbmc",
        "--version",
        "1.1.0",
        "--registry",
        str(registry),
        "--url-base",
        "https://models.example.org/lab/",
    )
    assert served.returncode == 0, served.stderr
    doc = yaml.safe_load(registry.read_text())
    assert doc["models"]["labpbmc"]["versions"]["1.1.0"]["url"] == "https://models.example.org/lab/labpbmc-1.1.0.zip"
    assert doc["models"]["labpbmc"]["default"] == "1.0.0"  # a new version becomes the default only with --default
    # the registered model resolves through the layered registry and its relative URL
    pulled = run_cli("cellzoo", "models", "pull", "labpbmc@1.0.0", "--registry", str(registry))
    assert pulled.returncode == 0, pulled.stderr
    assert (model_cache / "models" / PBMC_SHA / "MLmodel").is_file()


def test_show_prints_the_entry_card_and_pinned_reference():
    done = run_cli("cellzoo", "models", "show", f"pbmc@{PBMC_VERSION}")
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(None, 1) for line in done.stdout.splitlines()[:14] if line.strip())
    assert fields["sha256"] == PBMC_SHA and fields["family"] == "linear" and fields["cached"] == "no"
    assert fields["pinned"] == f"{PBMC_ARCHIVE.as_uri()}#sha256={PBMC_SHA}"
    assert "Kang" in done.stdout  # the model card
    unknown = run_cli("cellzoo", "models", "show", "pbmcc")
    assert unknown.returncode == 2 and "Did you mean 'pbmc'" in unknown.stderr
    version = run_cli("cellzoo", "models", "show", "pbmc@2")
    assert version.returncode == 2 and "versions: 1.0.0, 1.1.0" in version.stderr
