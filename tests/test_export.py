"""Arrow/Parquet out (issue 21, item 4): ``python -m clip_icm export`` and service.embedding_table write
one row per image with the documented columns (docs/EXPORT.md), and the file opens in pandas and DuckDB."""
import dataclasses
import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet
import pytest

from clip_icm import cli, evaluation, service
from clip_icm.methods import ALL_METHODS
from clip_icm.scm import SCMConfig
from clip_icm.service import exports, maps
from tests.folders import make_messy_domainbed
from tests.tiny_clip import write_local_dir

FAST = ["--pretrained", "none", "--quiet", "--text-banks", "styles", "--templates", "single", "--workers", "0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    messy = make_messy_domainbed(base / "data", n_per_class=4)
    return messy, ["--root", str(messy.root), "--model", f"local-dir:{write_local_dir(base / 'tiny')}",
                   "--cache", str(base / "cache"), *FAST]


def _prediction_columns(methods) -> list[str]:
    return [exports.PREDICTION_COLUMN.format(method=m.lower(), protocol=p)
            for m in ("CLIP", *methods) for p in ("zero_shot", "probe")]


def test_export_parquet_opens_in_pandas_and_duckdb_with_the_documented_columns(setup, tmp_path, capsys):
    messy, args = setup
    out = tmp_path / "messy.parquet"
    assert cli.main(["export", *args, "--target", "sketch", "--k", "4", "--no-coordinates", "--out", str(out)]) == 0
    assert "coordinates left null" in capsys.readouterr().out
    frame = pd.read_parquet(out)
    assert list(frame.columns) == [*exports.TABLE_COLUMNS, *_prediction_columns(ALL_METHODS)]
    assert len(frame) == messy.n_images
    assert set(frame.domain) == set(messy.domains) and set(frame.split) == {"train", "val"}
    assert ((frame.role == "target") == (frame.domain == "sketch")).all()
    assert all(p.startswith(str(messy.root)) for p in frame.path)
    assert frame.vector.map(len).eq(32).all() and frame.invariant_vector.map(len).eq(4).all()
    assert frame[["full_x", "invariant_y"]].isna().all().all()  # --no-coordinates
    classes = set(frame["class"])
    assert set(frame.pred_icm_probe) <= classes and set(frame.pred_clip_zero_shot) <= classes
    assert frame.pred_orth_cali_probe.isna().all()  # a text-only method has no probe
    assert frame.pred_orth_cali_zero_shot.notna().all()
    about = json.loads(pa.parquet.read_schema(out).metadata[exports.METADATA_KEY])
    assert (about["target"], about["K"], about["coordinates"]) == ("sketch", 4, False)
    by_domain = duckdb.sql(f"SELECT domain, count(*) AS n, min(len(vector)) AS d FROM read_parquet('{out}') "
                           "GROUP BY domain ORDER BY domain").fetchall()
    assert by_domain == [(d, int((frame.domain == d).sum()), 32) for d in sorted(messy.domains)]
    # The probe's accuracy on the target, computed in SQL, is the table's own
    sql = duckdb.sql(f"SELECT avg((pred_icm_probe = class)::INT) FROM read_parquet('{out}') "
                     "WHERE role = 'target'").fetchall()[0][0]
    target = frame[frame.role == "target"]
    assert sql == pytest.approx((target.pred_icm_probe == target["class"]).mean())


def test_export_arrow_keeps_fixed_size_vectors_and_agrees_with_parquet(setup, tmp_path):
    _, args = setup
    parquet, arrow = tmp_path / "a.parquet", tmp_path / "a.arrow"
    common = ["export", *args, "--target", "sketch", "--k", "4", "--methods", "icm", "--no-coordinates"]
    assert cli.main([*common, "--out", str(parquet)]) == 0
    assert cli.main([*common, "--format", "arrow", "--out", str(arrow)]) == 0
    exported = pyarrow.ipc.open_file(str(arrow)).read_all()
    assert exported.schema.field("vector").type == pa.list_(pa.float32(), 32)
    assert exported.column_names == [*exports.TABLE_COLUMNS, *_prediction_columns(["icm"])]
    assert duckdb.sql("SELECT typeof(vector) FROM exported LIMIT 1").fetchall() == [("FLOAT[32]",)]
    pd.testing.assert_frame_equal(exported.to_pandas().drop(columns=["vector", "invariant_vector"]),
                                  pd.read_parquet(parquet).drop(columns=["vector", "invariant_vector"]))


def test_embedding_table_coordinates_and_vectors_are_the_services_own():
    emb = service.load_embeddings(service.EmbeddingRequest(
        source="synthetic", synthetic=SCMConfig(n_invariant=4, n_variant=4, dim=16), n_per_domain=20))
    config = evaluation.EvalConfig(n_components=4, methods=("icm",))
    table = service.embedding_table(emb, "env 4", config)
    ids = np.arange(len(emb.labels))
    full = maps.full_layout(emb, ids)
    icm = service.fit(emb, "env 4", "icm", config)
    np.testing.assert_allclose(table["full_x"].to_numpy(), full[:, 0], rtol=1e-6)
    np.testing.assert_allclose(table["invariant_y"].to_numpy(), maps.invariant_layout(emb, ids, icm, full)[:, 1],
                               rtol=1e-5, atol=1e-5)
    vectors = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(vectors, emb.features.astype(np.float32))
    np.testing.assert_allclose(np.stack(table["invariant_vector"].to_numpy(zero_copy_only=False)),
                               icm.transform(emb.features), rtol=1e-5, atol=1e-5)
    predicted = evaluation.predict_all(emb, "env 4", "icm", config)[evaluation.LINEAR_PROBE]
    assert table["pred_icm_probe"].to_pylist() == [emb.class_names[i] for i in predicted]


def test_a_method_that_cannot_be_fitted_is_null_and_says_why():
    emb = service.load_embeddings(service.EmbeddingRequest(source="synthetic", n_per_domain=20))
    emb = dataclasses.replace(emb, attribute_prompts=None)  # as embeddings made without text banks
    config = evaluation.EvalConfig(n_components=4, methods=("orth_cali_class_free",))  # built from bank prompts
    table = service.embedding_table(emb, "env 4", config, coordinates=False)
    assert table["pred_orth_cali_class_free_zero_shot"].null_count == table.num_rows
    about = json.loads(table.schema.metadata[exports.METADATA_KEY])
    assert "text banks" in about["unavailable"]["orth_cali_class_free"]
    assert table["pred_clip_zero_shot"].null_count == 0


def test_bad_export_arguments_fail_before_any_embedding(setup, tmp_path, capsys):
    _, args = setup
    assert cli.main(["export", *args, "--format", "csv", "--out", str(tmp_path / "a")]) == 2
    assert cli.main(["export", *args, "--out", str(tmp_path / "missing" / "a.parquet")]) == 1
    assert cli.main(["export", *args, "--out", str(tmp_path)]) == 1
    assert cli.main(["export", *args, "--k", "0", "--out", str(tmp_path / "a.parquet")]) == 1
    assert cli.main(["export", *args, "--k", "33", "--out", str(tmp_path / "a.parquet")]) == 1  # D is 32
    assert cli.main(["export", *args, "--target", "mars", "--out", str(tmp_path / "a.parquet")]) == 1
    assert cli.main(["export", *args, "--val-fraction", "0", "--out", str(tmp_path / "a.parquet")]) == 1
    err = capsys.readouterr().err
    assert "export needs source validation rows" in err
    assert "does not exist" in err and "is a folder" in err and "--k must be at least 1" in err
    assert "embedding dimension 32" in err and "unknown domain 'mars'" in err
    assert "Traceback" not in err and not (tmp_path / "a.parquet").exists()
    with pytest.raises(ValueError, match="unknown table format"):
        service.table_bytes(pa.table({"a": [1]}), "csv")


def test_the_clis_format_names_are_the_services():
    assert cli.TABLE_FORMATS == exports.TABLE_FORMATS


def test_the_dashboards_parquet_download_is_the_table_with_coordinates(monkeypatch, tmp_path):
    import io

    from dashboard.screens import explorer

    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path))
    emb = service.load_embeddings(service.EmbeddingRequest(source="synthetic", n_per_domain=20))
    config = evaluation.EvalConfig(n_components=4, methods=("icm",))
    frame = pd.read_parquet(io.BytesIO(explorer.embeddings_parquet(emb, "env 4", config)))
    assert list(frame.columns) == [*exports.TABLE_COLUMNS, *_prediction_columns(["icm"])]
    assert frame[["full_x", "full_y", "invariant_x", "invariant_y"]].notna().all().all()
    monkeypatch.setattr(service, "MAP_POINTS", len(emb.labels) - 1)  # maps that subsample: no UMAP of every row
    frame = pd.read_parquet(io.BytesIO(explorer.embeddings_parquet(emb, "env 4", config)))
    assert frame.full_x.isna().all() and len(frame) == len(emb.labels)
