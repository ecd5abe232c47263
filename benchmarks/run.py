"""Reproduce docs/benchmarks.md: accuracy against the peers, the lung pair, novelty, then scale.

    python benchmarks/run.py                      # everything (several hours on 2 shared cores; see each part)
    python benchmarks/run.py --only accuracy      # one part; the other part's last fragment is kept
    python benchmarks/run.py --quick              # small settings, for development (writes to /tmp)
    python benchmarks/run.py --join               # only join the fragments into docs/benchmarks.md

Each part writes its fragment and plots to ``docs/benchmarks/`` (``accuracy.md``, ``lung.md``, ``novelty.md``,
``voting.md``, ``scale.md``, ...) and this script joins the fragments into ``docs/benchmarks.md``. Options after
``--`` go to the parts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a script (python benchmarks/run.py): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import accuracy, cluster, lung, lung_panel, novelty, novelty_limits, placement, scale, voting

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PARTS = {
    "accuracy": accuracy.main,
    "lung": lung.main,
    "lung_panel": lung_panel.main,
    "novelty": novelty.main,
    "novelty_limits": novelty_limits.main,
    "placement": placement.main,
    "voting": voting.main,
    "scale": scale.main,
    "cluster": cluster.main,
}
HEADER = """# Benchmarks

Reproduce every table here with `python benchmarks/run.py` from the repository root, after the README's
install with the benchmark extra (CellTypist, for the scale part): `pip install -e ".[test,bench]" -c
constraints.txt`. The accuracy, lung and novelty parts run CellTypist with its default solver in its own
virtualenv (celltypist 1.7.1 needs scikit-learn < 1.8), created on first use by `benchmarks/peers.py`. Each
part names its machine, versions and settings. Plots are in `docs/benchmarks/`.

- [Accuracy against the peers](#accuracy-against-the-peers): {accuracy}
- [Lung: leave one study out, back-off, cap & fill](#lung-leave-one-study-out-back-off-cap--fill): {lung}
- [A targeted lung panel](#a-targeted-lung-panel): {lung_panel}
- [Novelty: types, tissues and species the model never saw][novelty]: {novelty}
- [Novelty limits: what a class missing from the reference carries][limits]: {novelty_limits}
- [Placement on the reference map](#placement-on-the-reference-map): {placement}
- [Majority voting: cellzoo against CellTypist](#majority-voting-cellzoo-against-celltypist): {voting}
- [Scale and speed](#scale-and-speed): {scale}
- [Dask: annotate on a cluster](#dask-annotate-on-a-cluster): {cluster}

[novelty]: #novelty-types-tissues-and-species-the-model-never-saw
[limits]: #novelty-limits-what-a-class-missing-from-the-reference-carries
"""


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(PARTS), action="append", help="Run only this part (repeatable).")
    parser.add_argument("--quick", action="store_true", help="Small settings; writes to /tmp/cellzoo-bench-docs.")
    parser.add_argument("--join", action="store_true", help="Run nothing: join the fragments there are.")
    parser.add_argument("rest", nargs="*", help="Options after -- are passed to each part.")
    args = parser.parse_args(argv)
    docs = Path("/tmp/cellzoo-bench-docs") if args.quick else DOCS
    fragments = docs / "benchmarks"
    for name in [] if args.join else args.only or sorted(PARTS):
        extra = ["--quick", "--docs-dir", str(fragments)] if args.quick else []  # else the parts' docs/benchmarks
        PARTS[name]([*extra, *args.rest])
    status = {name: "see below" if (fragments / f"{name}.md").exists() else "not run yet" for name in PARTS}
    document = HEADER.format(**status) + "".join("\n" + section(fragments, name) for name in PARTS)
    out = docs / "benchmarks.md"
    out.write_text(document)
    print(f"wrote {out}")
    return out


def section(fragments: Path, name: str) -> str:
    """A part's fragment as a section of the document: headings one level down, plot links from docs/."""
    fragment = fragments / f"{name}.md"
    if not fragment.exists():
        return f"## {name}\n\nNot run yet: `python benchmarks/run.py --only {name}`.\n"
    lines = fragment.read_text().splitlines()
    top = min(len(line) - len(line.lstrip("#")) for line in lines if line.startswith("#"))
    lines = ["#" * (2 - top) + line if line.startswith("#") else line for line in lines]  # its top heading: ##
    return "\n".join(lines).replace(f"]({name}_", f"]({fragments.name}/{name}_") + "\n"


if __name__ == "__main__":
    main()
