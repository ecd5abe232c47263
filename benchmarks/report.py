"""What the benchmark reports share: markdown tables and the versions of the packages measured."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def package_version(package: str, missing: str = "not installed") -> str:
    """The installed version of ``package``, or ``missing``."""
    try:
        return version(package)
    except PackageNotFoundError:
        return missing
