"""Downloads: the projection (.npz), the accuracy table (.csv), figures as PNG when kaleido can, and
the embeddings as one Arrow table (Parquet or Arrow IPC) for pandas, DuckDB, Embedding Atlas, FiftyOne."""
from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from clip_icm import evaluation
from clip_icm.embeddings import EmbeddingSet
from clip_icm.errors import InvalidInput, check_names
from clip_icm.service import maps
from clip_icm.service.fitting import Fit, fit

if TYPE_CHECKING:  # pyarrow is imported when a table is made
    import pyarrow as pa

# Arrow's two file forms: Parquet (compressed, every tool reads it) and the Arrow IPC file (Feather v2).
TABLE_FORMATS = ("parquet", "arrow")
# The columns every exported table has, in order (docs/EXPORT.md says what each holds); then one
# prediction column per method and protocol: PREDICTION_COLUMN.format(method=..., protocol=...).
COORDINATE_COLUMNS = ("full_x", "full_y", "invariant_x", "invariant_y")
TABLE_COLUMNS = ("path", "domain", "class", "label", "split", "role", *COORDINATE_COLUMNS, "vector", "invariant_vector")
PREDICTION_COLUMN = "pred_{method}_{protocol}"
PROTOCOL_COLUMN_NAMES = {evaluation.ZERO_SHOT: "zero_shot", evaluation.LINEAR_PROBE: "probe"}
METADATA_KEY = b"clip_icm"  # the schema metadata entry: what the table was made with, as JSON

def projection_npz(fitted: Fit, emb: EmbeddingSet, model: str) -> bytes:
    """The fitted projection with everything needed to know what it is."""
    buf = io.BytesIO()
    eigen = fitted.eigenvalues
    np.savez(
        buf, components=fitted.projection.components_, eigenvalues=eigen if eigen is not None else np.zeros(0),
        K=fitted.K, lam=fitted.lam, lam_mode=fitted.lam_mode, method=fitted.method, target=fitted.target,
        lam_effective=getattr(fitted.projection, "lam_effective_", fitted.lam),
        model=model, data_key=emb.key, invariance_ratio=fitted.invariance_ratio,
        class_names=np.asarray(emb.class_names), domains=np.asarray(emb.domain_names),
    )
    return buf.getvalue()


def accuracy_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


def png_available() -> bool:
    """Static PNG and SVG export need kaleido (and its browser); offline without it we skip PNGs."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


def figure_png(fig) -> bytes | None:
    """PNG bytes of a plotly figure, or None when static export does not work here."""
    return _figure_image(fig, "png", scale=2)


def figure_svg(fig) -> bytes | None:
    """SVG bytes of a plotly figure, or None when static export does not work here."""
    return _figure_image(fig, "svg")


def _figure_image(fig, image_format: str, **options) -> bytes | None:
    if not png_available():
        return None
    try:
        return fig.to_image(format=image_format, **options)
    except Exception:  # kaleido failing to find or start a browser has no single error type
        return None


def embedding_table(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig, coordinates: bool = True,
                    seed: int = 0, store=None) -> pa.Table:
    """One row per image of ``emb``: its path, domain, class, split and role (``target`` held out),
    the full and invariant (ICM, fitted without ``target``) 2-D UMAP coordinates (null when
    ``coordinates`` is False: UMAP of every row is the slow part, and grows with the rows), each
    method's predicted class under both protocols (CLIP first; null where a method has no probe, or
    cannot be fitted on these embeddings: the metadata's "unavailable" says why), and the full and
    invariant vectors as fixed-size lists. The settings are in the schema's metadata (METADATA_KEY)."""
    import pyarrow as pa

    icm = fit(emb, target, "icm", config)
    names = np.asarray(emb.class_names, dtype=object)
    paths = emb.paths if emb.paths is not None else np.full(len(emb.labels), "")
    columns = {
        "path": pa.array(paths.astype(str)), "domain": pa.array(emb.domains.astype(str)),
        "class": pa.array(names[emb.labels].astype(str)), "label": pa.array(emb.labels, pa.int32()),
        "split": pa.array(np.where(emb.is_train, "train", "val")),
        "role": pa.array(np.where(emb.domains == target, "target", "source")),
        **_coordinates(emb, icm, coordinates, seed, store),
        "vector": _fixed_size_lists(emb.features),
        "invariant_vector": _fixed_size_lists(icm.transform(emb.features)),
    }
    unavailable = {}
    for method in (evaluation.FULL_SPACE, *config.methods):
        try:
            predicted = evaluation.predict_all(emb, target, method, config)
        except InvalidInput as err:  # e.g. Orth-Cali without text banks: its columns stay null, and say why
            predicted, unavailable[method] = {}, str(err)
        for protocol, name in PROTOCOL_COLUMN_NAMES.items():
            rows = predicted.get(protocol)
            columns[PREDICTION_COLUMN.format(method=method.lower(), protocol=name)] = (
                pa.nulls(len(emb.labels), pa.string()) if rows is None else pa.array(names[rows].astype(str)))
    about = {"target": target, "K": config.n_components, "lam": config.lam, "lam_mode": config.lam_mode,
             "methods": [evaluation.FULL_SPACE, *config.methods], "unavailable": unavailable,
             "coordinates": coordinates, "seed": seed, "class_names": list(emb.class_names),
             "embedding_key": emb.key, **emb.origin}
    return pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(about).encode()})


def _coordinates(emb: EmbeddingSet, icm: Fit, wanted: bool, seed: int, store) -> dict:
    import pyarrow as pa

    if not wanted:
        return {name: pa.nulls(len(emb.labels), pa.float32()) for name in COORDINATE_COLUMNS}
    ids = np.arange(len(emb.labels))
    full = maps.full_layout(emb, ids, seed, store)
    invariant = maps.invariant_layout(emb, ids, icm, full, seed, store)
    values = (full[:, 0], full[:, 1], invariant[:, 0], invariant[:, 1])
    return {name: pa.array(v, pa.float32()) for name, v in zip(COORDINATE_COLUMNS, values)}


def _fixed_size_lists(X: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of ``X`` as float32 fixed-size lists (pandas reads arrays; DuckDB FLOAT[D] from the Arrow
    file, FLOAT[] from Parquet, which has no fixed-size list)."""
    import pyarrow as pa

    X = np.ascontiguousarray(X, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1])


def table_bytes(table: pa.Table, table_format: str = "parquet") -> bytes:
    """``table`` as a Parquet or Arrow IPC file (TABLE_FORMATS)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_names("table format", (table_format,), TABLE_FORMATS)
    sink = pa.BufferOutputStream()
    if table_format == "parquet":
        pq.write_table(table, sink)
    else:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    return sink.getvalue().to_pybytes()
