"""What the benchmark reports share: markdown tables and the versions of the packages measured."""

from __future__ import annotations

from pathlib import Path


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def package_version(package: str, missing: str = "not installed") -> str:
    """The installed version of ``package`` (or of a build of it, such as xgboost-cpu), or ``missing``."""
    from runner.envs import installed_version

    return installed_version(package) or missing


def publish(docs_dir: Path, name: str, text: str) -> str:
    """Write a benchmark's fragment ``docs_dir/name`` (the folder made if needed), print it and return it."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / name).write_text(text)
    print(text)
    return text
