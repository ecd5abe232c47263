"""The Python API, as ``import cellzoo`` shows it: annotate an AnnData in memory, read any supported input,
resolve, load and list models.

:func:`annotate` runs the core of the ``annotate`` command (:func:`runner.annotate.annotate_query`), so an
AnnData annotated here holds exactly the keys and provenance the command writes into its output file.
Heavy libraries are imported when a function is first called.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UsageError
from runner.options import (
    CheckOptions,
    ModelOptions,
    ReadOptions,
    RunOptions,
    describe_options,
    split_options,
)

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

    from runner.invoke import ModelInfo
    from runner.resolve import ResolvedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """A resolved, verified zoo model on disk: what a notebook needs to know of it before annotating.

    ``cellzoo.annotate(adata, model)`` takes it in place of a reference (the model is not resolved again).
    """

    resolved: ResolvedModel
    info: ModelInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return str(self.info.metadata.get("version", ""))

    @property
    def path(self) -> Path:
        """The unpacked MLflow model directory (in the cache)."""
        return self.resolved.path

    @property
    def metadata(self) -> dict:
        """The MLmodel ``metadata``: family, species, tissue, labels, uncertainty, training reference, metrics."""
        return self.info.metadata

    @property
    def genes(self) -> list[str]:
        """The model's genes, in the order its input takes them."""
        return [str(g) for g in self.info.genes]

    @property
    def labels(self) -> dict[str, str]:
        """Each label the model predicts, with its Cell Ontology id ('' where there is none)."""
        labels = self.info.metadata.get("labels") or {}
        return {str(k): str((v or {}).get("ontology_term_id", "")) for k, v in labels.items()}

    @property
    def card(self) -> str:
        """The model card (markdown), '' when the model has none."""
        card = self.path / "README.md"
        return card.read_text() if card.is_file() else ""

    def pyfunc(self):
        """The MLflow pyfunc (``predict(counts, params)``; the model contract in DESIGN.md). Loading runs its code."""
        from runner.invoke import load_pyfunc

        return load_pyfunc(self.info)

    def __repr__(self) -> str:
        meta = self.info.metadata
        return (
            f"Model({self.name!r}, version={self.version!r}, family={meta.get('family', '')!r}, "
            f"species={self.info.species!r}, genes={len(self.info.genes)}, labels={len(self.labels)}, "
            f"sha256={self.resolved.sha256[:12]!r})"
        )


def resolve_model(reference: str, **options: Any) -> ResolvedModel:
    """Resolve a model reference to a verified model directory, fetching it into the cache if needed.

    Parameters
    ----------
    reference
        ``NAME``, ``NAME@VERSION``, ``URL#sha256=HEX``, a URL, a model directory or zip, ``models:/NAME/N``.
    **options
        ``trust``, ``offline``, ``tracking_uri``, ``registries`` (:class:`runner.options.ModelOptions`).

    Returns
    -------
    :class:`runner.resolve.ResolvedModel`: ``path``, ``reference``, ``url``, ``sha256``, ``registry_version``.
    """
    (source,) = split_options(options, (ModelOptions,))
    return source.resolve(reference)


def load_model(reference: str | Model, **options: Any) -> Model:
    """Resolve ``reference`` (:func:`resolve_model`) and read what the model says of itself (its MLmodel).

    Returns
    -------
    :class:`Model`: ``name``, ``version``, ``genes``, ``labels``, ``metadata``, ``card``, ``path``;
    ``pyfunc()`` loads the MLflow model itself.
    """
    (source,) = split_options(options, (ModelOptions,))
    return _load(reference, source)


def _load(reference: str | Model, source: ModelOptions) -> Model:
    if isinstance(reference, Model):
        return reference
    from runner.invoke import read_model_info

    resolved = source.resolve(reference)
    return Model(resolved, read_model_info(resolved.path))


def list_models(registries: tuple[Path, ...] | list[Path] = ()) -> pd.DataFrame:
    """The models of the zoo's registry and of ``registries`` (and ``$CELLZOO_REGISTRIES``), one row per name:
    ``name``, ``version`` (the default), ``species``, ``tissue``, ``family``, ``cached``, ``description``."""
    import pandas as pd

    return pd.DataFrame(model_rows(registries)).set_index("name")


def model_rows(registries: tuple[Path, ...] | list[Path] = ()) -> list[dict[str, Any]]:
    """:func:`list_models` as plain rows (for ``cellzoo models list``)."""
    from runner.cache import is_cached
    from runner.registry import load_registries

    layered = load_registries(tuple(registries))
    rows = []
    for name in layered.names():
        entry = layered.get(name)
        rows.append(
            {
                "name": name,
                "version": entry.version,
                "species": entry.species,
                "tissue": entry.tissue,
                "family": entry.family,
                "cached": is_cached(entry.sha256),
                "description": entry.description,
            }
        )
    return rows


def read(path: str | Path, **options: Any) -> ad.AnnData:
    """Read any input ``annotate`` reads (h5ad, zarr, loom, 10x h5 / folder / archive, csv/tsv, other HDF5) as
    an AnnData of cells x genes, the matrix as stored.

    Parameters
    ----------
    path
        The file or folder.
    **options
        ``genome``, ``orientation``, ``transpose``, ``matrix_key``, ``obs_key``, ``var_key``
        (:class:`runner.options.ReadOptions`). What the reader noticed (e.g. dropped non-gene features) is
        logged as a warning.
    """
    from runner.readers import read_input

    (read_options,) = split_options(options, (ReadOptions,))
    adata, found = read_input(Path(path), read_options)
    for note in found.notes:
        logger.warning("%s: %s", Path(path).name, note)
    return adata


def annotate(
    adata: ad.AnnData,
    model: str | Model,
    *,
    key_added: str | None = None,
    copy: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> ad.AnnData | None:
    """Annotate the cells of ``adata`` with a zoo model, as the ``annotate`` command does for a file.

    The same checks run first (raw counts, gene ids and species, overlap with the model, cells) and the same
    keys and provenance are written. Raw counts are taken from ``counts_layer``, else ``raw.X``, else ``X``;
    log1p-normalised values with library sizes in ``obs`` (``nUMI``, ``n_counts``, ``total_counts``, ...) are
    turned back into their exact counts. Nothing is written unless the whole run succeeds.

    Parameters
    ----------
    adata
        Cells x genes, with raw counts (or log1p-normalised values and library sizes, see above).
    model
        ``NAME``, ``NAME@VERSION``, ``URL#sha256=HEX``, a model directory or zip, ``models:/NAME/N``, or a
        :class:`Model` from :func:`load_model`.
    key_added
        The key ``K`` of the results (default: the model's name).
    copy
        Annotate and return a copy of ``adata``; by default ``adata`` itself is annotated and ``None``
        returned (scanpy's convention).
    overwrite
        Replace results already under ``K`` (else they are refused).
    **options
        Any option of the run, as on the command line:

        {options}

    Returns
    -------
    ``None``, or with ``copy=True`` the annotated copy. Sets the following fields (``K``: ``key_added``):

    ``obs['K_predicted']``
        categorical label; ``Unassigned`` where the uncertainty is above ``unassigned_threshold``, and for
        cells with no counts (or none in the model's genes).
    ``obs['K_uncertainty']``
        float in [0, 1], 0 = certain (its meaning: ``uns['K']['model']['uncertainty']``).
    ``obs['K_ontology_term_id']``
        Cell Ontology id of the predicted label ('' when unassigned or unknown).
    ``obs['K_majority_voting']``, ``obs['K_majority_voting_ontology_term_id']``, ``obs['K_over_clustering']``
        with ``majority_voting=True``: the most frequent answer of the cell's over-cluster, its id, the cluster.
    ``obsm['K_probabilities']``
        per-class probabilities, cells x classes, with the class names.
    ``obsm['X_K']``
        the model's embedding.
    ``obsm['X_K_umap']``
        the cells placed on the reference's UMAP (``sc.pl.embedding(adata, basis='X_K_umap')``).
    ``uns['K']``
        provenance: ``model`` (name, version, family, reference given, resolved url, sha256,
        registry_version, tracking_uri, uncertainty), ``runner_version``, ``date``, ``input`` (''),
        ``input_format``, ``params`` (every option above, plus ``environment``, ``counts``: where the raw
        counts came from and whether they were rebuilt, ``gene_names``, ``species``, ``read_options``,
        ``streamed``), ``cells`` (numbers of ``empty``, ``no_model_genes``, ``duplicate_barcodes``) and
        ``gene_overlap`` (``model_genes``, ``present_before_mapping``, ``present``, ``fraction``,
        ``summed_duplicates``). See :func:`runner.annotate.annotate_query`.

    Examples
    --------
    >>> import cellzoo
    >>> adata = cellzoo.read("kang2018_pbmc.h5ad")
    >>> cellzoo.annotate(adata, "pbmc")
    >>> adata.obs["pbmc_predicted"].value_counts()
    """
    from runner.annotate import annotate_query
    from runner.sources import AnnDataQuery

    checks, run, source = split_options(options, (CheckOptions, RunOptions, ModelOptions))
    if run.backed:
        raise UsageError("backed=True streams a file; to stream an h5ad, use annotate from the command line")
    model = _load(model, source)
    target = adata.copy() if copy else adata
    query = AnnDataQuery(target, checks.counts_layer)
    annotate_query(query, model.resolved, key_added=key_added, overwrite=overwrite, checks=checks, run=run)
    return target if copy else None


_OPTIONS_DOC = describe_options((CheckOptions, RunOptions, ModelOptions), skip=("backed",))
annotate.__doc__ = (annotate.__doc__ or "").replace(
    "        {options}", "\n".join(f"        {line}" for line in _OPTIONS_DOC.splitlines())
)
