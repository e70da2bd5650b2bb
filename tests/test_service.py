"""service: the layer the dashboard calls (synthetic embeddings, so no model is needed)."""
import io

import numpy as np
import pandas as pd
import pytest

from clip_icm import defaults, evaluation, service
from clip_icm.scm import SCMConfig

SYNTH = service.EmbeddingRequest(source="synthetic", synthetic=SCMConfig(n_invariant=4, n_variant=4, dim=16),
                                 n_per_domain=60)


@pytest.fixture(scope="module")
def emb():
    return service.load_embeddings(SYNTH)


def _config(K=4, lam=1000.0, methods=("icm",)):
    return service.eval_config(K, lam, "absolute", methods)


def test_synthetic_request_loads_and_its_key_follows_its_content(emb):
    assert emb.features.shape == (240, 16) and emb.domain_names[-1] == "env 4"
    # vectors an SCM draws, named as environments: not after PACS's image domains (the tour, issue 25)
    assert emb.domain_names == list(service.SYNTHETIC_DOMAINS) == ["env 1", "env 2", "env 3", "env 4"]
    assert service.default_target(emb, "synthetic") == "env 4"
    other = service.EmbeddingRequest(source="synthetic", n_per_domain=61)
    assert SYNTH.key == service.EmbeddingRequest(**{**SYNTH.__dict__}).key != other.key


@pytest.mark.parametrize("request_, message", [
    (service.EmbeddingRequest(source="nowhere"), "unknown data source"),
    (service.EmbeddingRequest(source="folder", root=""), "Enter the folder"),
    (service.EmbeddingRequest(source="folder", root="/no/such/folder"), "Folder not found: /no/such/folder"),
])
def test_user_errors_become_service_errors(request_, message):
    with pytest.raises(service.ServiceError, match=message):
        service.load_embeddings(request_)


def test_missing_weights_offline_is_a_service_error_naming_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hf-cache")
    request = service.EmbeddingRequest(source="demo", model="ViT-B-32", pretrained="laion2b_s34b_b79k",
                                       max_per_domain=2)
    with pytest.raises(service.ServiceError, match="ViT-B-32"):
        service.load_embeddings(request)


def test_a_domain_without_images_is_reported_in_notes(tmp_path, monkeypatch):
    from PIL import Image

    from tests.tiny_clip import write_local_dir

    monkeypatch.setenv("CLIP_ICM_CACHE", str(tmp_path / "store"))
    for domain in ("photo", "art"):
        for cls in ("dog", "cat"):
            (tmp_path / "data" / domain / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (40 * i, 100, 200)).save(tmp_path / "data" / domain / cls / f"{i}.png")
    (tmp_path / "data" / "sketch" / "dog").mkdir(parents=True)
    model = write_local_dir(tmp_path / "tiny")
    request = service.EmbeddingRequest(source="folder", root=str(tmp_path / "data"), model=f"local-dir:{model}",
                                       pretrained="none", interventions=service.InterventionChoice(
                                           image_ops=("grayscale",), n_pairs=2))
    notes: list[str] = []
    emb = service.load_embeddings(request, notes=notes)
    assert emb.domain_names == ["art", "photo"]
    assert any("sketch" in n and "no readable images" in n for n in notes)
    (tmp_path / "data" / "art" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    notes.clear()
    service.load_embeddings(request, notes=notes)
    assert any("1 file(s) skipped" in n and "broken.jpg" in n for n in notes)


def test_true_factors_are_found_for_the_demo_and_toydomains_folders(tmp_path):
    assert service.has_true_factors("demo") and not service.has_true_factors("synthetic")
    (tmp_path / "ToyDomains").mkdir()
    assert not service.has_true_factors("folder", str(tmp_path), "ToyDomains")
    (tmp_path / "ToyDomains" / "factors.csv").write_text("path\n")
    assert service.has_true_factors("folder", str(tmp_path), "ToyDomains")
    assert service.has_true_factors("folder", str(tmp_path / "ToyDomains"), None)
    assert not service.has_true_factors("folder", str(tmp_path / "absent"), None)


def test_detect_folder(tmp_path):
    from tests.folders import make_messy_domainbed

    messy = make_messy_domainbed(tmp_path / "messy")
    assert service.detect_folder(str(messy.root))["is_dataset"] is True
    with pytest.raises(service.ServiceError, match="Folder not found"):
        service.detect_folder(str(tmp_path / "absent"))


def test_fit_measures_invariance_on_held_out_pairs(emb):
    good = service.fit(emb, "env 4", "icm", _config())
    bad = service.fit(emb, "env 4", "icm_as_released", _config(methods=("icm_as_released",)))
    assert good.ratio_pairs.startswith("held-out target-domain")
    assert good.invariance_ratio < 0.5 * good.full_ratio  # the kept directions ignore interventions
    assert bad.invariance_ratio > good.invariance_ratio
    assert good.transform(emb.features).shape == (len(emb.labels), 4)
    with pytest.raises(service.ServiceError, match="Could not fit"):
        service.fit(emb, "env 4", "icm", _config(K=99))


def test_a_fits_ratio_pairs_are_the_target_domains_pairs_selected_once_per_embedding_set(emb):
    """A K change's fit reads the invariance ratios' pairs kept for its EmbeddingSet: the same rows as a
    fresh selection, read-only, and a fit at another K measures on them (its full-space ratio unchanged)."""
    from clip_icm.evaluation import _Memo

    _Memo.clear()
    first = service.fit(emb, "env 4", "icm", _config(K=4))
    Z, Z_do, which = evaluation.ratio_pairs(emb, "env 4", None)
    held = [(p.z[p.domains == "env 4"], p.z_do[p.domains == "env 4"]) for p in emb.pairs if p.domains is not None]
    np.testing.assert_array_equal(Z, np.concatenate([h[0] for h in held if len(h[0])]))
    np.testing.assert_array_equal(Z_do, np.concatenate([h[1] for h in held if len(h[1])]))
    assert which == first.ratio_pairs == "held-out target-domain pairs"
    assert evaluation.ratio_pairs(emb, "env 4", None)[0] is Z  # kept, not selected again
    with pytest.raises(ValueError, match="read-only"):
        Z[0, 0] = 1.0
    other = service.fit(emb, "env 4", "icm", _config(K=3))
    assert other.full_ratio == first.full_ratio and other.invariance_ratio != first.invariance_ratio
    _Memo.clear()
    assert service.fit(emb, "env 4", "icm", _config(K=3)).invariance_ratio == other.invariance_ratio
    assert evaluation.ratio_pairs(emb, "env 1", None)[0].shape[0] == sum(int((p.domains == "env 1").sum())
                                                                           for p in emb.pairs if p.domains is not None)


def test_accuracy_table_merges_methods_and_measures_change_vs_clip(emb):
    frames = [service.evaluate(emb, "env 4", _config(methods=(m,))) for m in ("icm", "pca")]
    table = service.accuracy_table(frames)
    assert not table.duplicated(["domain", "method", "protocol"]).any()
    assert list(dict.fromkeys(table["method"])) == ["CLIP", "icm", "pca"]
    assert (table.loc[table.method == "CLIP", "change_vs_clip"] == 0).all()
    row = table[(table.method == "icm") & (table.domain == "env 4") & (table.protocol == "linear probe")].iloc[0]
    clip = table[(table.method == "CLIP") & (table.domain == "env 4") & (table.protocol == "linear probe")].iloc[0]
    assert row.change_vs_clip == pytest.approx(row.accuracy - clip.accuracy)
    wide = service.accuracy_wide(table, "env 4")
    assert "env 4 (target)" in wide.columns and "ICM linear probe" in wide.index
    assert wide.loc["CLIP zero-shot", "target change vs CLIP"] == 0


def test_the_wide_accuracy_table_keeps_the_tables_order_and_leaves_a_missing_cell_empty():
    import numpy as np
    import pandas as pd

    table = pd.DataFrame([dict(label=label, domain=domain, accuracy=accuracy, change_vs_clip=change)
                          for label, domain, accuracy, change in [
                              ("ICM linear probe", "sketch", 0.5, 0.1), ("ICM linear probe", "photo", 0.9, 0.0),
                              ("CLIP zero-shot", "photo", 0.8, 0.0), ("CLIP zero-shot", "sketch", 0.4, 0.0),
                              ("Orth-Cali linear probe", "sketch", np.nan, np.nan)]])
    wide = service.accuracy_wide(table, "sketch")
    assert list(wide.index) == ["ICM linear probe", "CLIP zero-shot", "Orth-Cali linear probe"]
    assert list(wide.columns) == ["sketch (target)", "photo", "target change vs CLIP"]
    assert wide.loc["ICM linear probe"].tolist() == [0.5, 0.9, 0.1]
    assert np.isnan(wide.loc["Orth-Cali linear probe", "photo"])  # no row for it: empty, not dropped
    assert wide.loc["CLIP zero-shot", "target change vs CLIP"] == 0.0


def test_evaluate_rejects_an_unknown_target(emb):
    with pytest.raises(service.ServiceError, match="unknown target domain"):
        service.evaluate(emb, "mars", _config())


def test_choose_hyperparameters_uses_the_grid(emb):
    K, lam, scores = service.choose_hyperparameters(emb, "env 4", "icm", _config(), (2, 4), (1.0, 1000.0))
    assert (K, lam) in set(zip(scores.K, scores.lam)) and len(scores) == 4


def test_a_choice_of_k_and_lam_is_kept_in_the_store_by_content(emb, tmp_path, monkeypatch):
    from clip_icm.store import EmbeddingStore

    grid = ((2, 4), (1.0, 1000.0))
    first = service.choose_hyperparameters(emb, "env 4", "icm", _config(), *grid, store=EmbeddingStore(tmp_path))
    clip = service.full_space_score(emb, "env 4", _config(), "source_val", store=EmbeddingStore(tmp_path))
    calls = []
    select, score = evaluation.select_hyperparameters, evaluation.source_score
    monkeypatch.setattr(evaluation, "select_hyperparameters", lambda *a, **kw: calls.append(1) or select(*a, **kw))
    monkeypatch.setattr(evaluation, "source_score", lambda *a, **kw: calls.append(1) or score(*a, **kw))
    again = service.choose_hyperparameters(emb, "env 4", "icm", _config(), *grid, store=EmbeddingStore(tmp_path))
    assert service.full_space_score(emb, "env 4", _config(), "source_val", store=EmbeddingStore(tmp_path)) == clip
    assert not calls and again[:2] == first[:2]  # a restart reads the choice and CLIP's score back
    pd.testing.assert_frame_equal(again[2], first[2])  # every setting's score, exactly
    for changed in ((emb, "env 1", _config()), (emb, "env 4", _config(lam=10.0)),
                    (service.restrict_domains(emb, ("env 4", "env 1")), "env 4", _config())):
        service.choose_hyperparameters(*changed[:2], "icm", changed[2], *grid, store=EmbeddingStore(tmp_path))
    assert len(calls) == 3  # another target, config or set of domains: chosen again


def test_the_model_choice_is_kept_in_the_store_with_every_field(emb, tmp_path, monkeypatch):
    from dataclasses import fields

    from clip_icm import choice
    from clip_icm.store import EmbeddingStore

    frame, made = service.evaluate_and_choose(emb, "env 4", _config(), store=EmbeddingStore(tmp_path))
    monkeypatch.setattr(choice, "evaluate_and_choose", lambda *a, **kw: pytest.fail("chosen again"))
    again_frame, again = service.evaluate_and_choose(emb, "env 4", _config(), store=EmbeddingStore(tmp_path))
    pd.testing.assert_frame_equal(again_frame, frame)
    for field in fields(choice.Choice):  # a field added to Choice and not kept fails here
        mine, kept = getattr(made, field.name), getattr(again, field.name)
        if isinstance(mine, pd.DataFrame):
            pd.testing.assert_frame_equal(kept, mine)
        else:
            assert kept == mine, field.name


def test_every_targets_choice_made_in_its_own_process_is_the_choice_made_here(emb, tmp_path, monkeypatch):
    """The Explorer's and the Story's overview: the choices a spawned process keeps in the store are the
    numbers this process computes (one BLAS thread in both, as the dashboard runs), field for field."""
    from dataclasses import fields

    from threadpoolctl import threadpool_limits

    from clip_icm import background
    from clip_icm.store import EmbeddingStore

    targets, store, started, run = ["env 4", "env 1"], EmbeddingStore(tmp_path), [], background.run
    monkeypatch.setattr(background, "run", lambda *a, **kw: started.append(kw) or run(*a, **kw))
    monkeypatch.setattr(background, "MAPPED_BYTES", 0)  # every array through a mapped file, as at 50,000 images
    service.evaluate_and_choose_every_target(emb, targets, _config(), store)
    assert started == [{"low_priority": True}]  # one process, below the server's own work
    with threadpool_limits(1, user_api="blas"):
        here = {t: service.evaluate_and_choose(emb, t, _config(), store=None) for t in targets}
    from clip_icm import choice
    monkeypatch.setattr(choice, "evaluate_and_choose", lambda *a, **kw: pytest.fail("chosen again, not read back"))
    for target, (frame, made) in here.items():
        kept_frame, kept = service.evaluate_and_choose(emb, target, _config(), store=store)
        pd.testing.assert_frame_equal(kept_frame, frame, check_exact=True)
        for field in fields(choice.Choice):
            mine, theirs = getattr(made, field.name), getattr(kept, field.name)
            if isinstance(mine, pd.DataFrame):
                pd.testing.assert_frame_equal(theirs, mine, check_exact=True)
            else:
                assert theirs == mine, field.name
    # every target kept: no process is started again
    monkeypatch.setattr(background, "run", lambda *a, **kw: pytest.fail("a process for choices already kept"))
    service.evaluate_and_choose_every_target(emb, targets, _config(), store)


def test_every_targets_choice_in_its_own_process_reports_a_bad_target(emb, tmp_path):
    from clip_icm.store import EmbeddingStore

    with pytest.raises(service.ServiceError, match="unknown target domain 'nowhere'"):
        service.evaluate_and_choose_every_target(emb, ["nowhere"], _config(), EmbeddingStore(tmp_path))


def test_every_targets_choice_without_a_store_is_made_here_and_a_process_never_started(emb, monkeypatch):
    """Without a store the results could not come back from a process: made here (and not kept)."""
    from clip_icm import background

    monkeypatch.setattr(background, "run", lambda *a, **kw: pytest.fail("a process whose results are lost"))
    calls = []
    choose = service.evaluate_and_choose
    monkeypatch.setattr(service.fitting, "evaluate_and_choose", lambda *a, **kw: calls.append(a[1]) or choose(*a, **kw))
    service.evaluate_and_choose_every_target(emb, ["env 4", "env 2"], _config(), None)
    assert calls == ["env 4", "env 2"]


def test_settings_evaluated_ahead_in_their_own_process_are_what_a_move_there_computes(emb, tmp_path, monkeypatch):
    """A slider move to a setting evaluated ahead reads its accuracy tables and confusions from the store: the
    numbers this process computes there (one BLAS thread, as the dashboard runs), exactly; settings kept
    already start no process; without a store nothing is made."""
    from threadpoolctl import threadpool_limits

    from clip_icm import background
    from clip_icm.store import EmbeddingStore

    settings = [(_config(K=3), service.with_unused_fixed("augmentation", _config(K=3, methods=("augmentation",)))),
                (_config(K=4, lam=10.0),)]
    store, started, call = EmbeddingStore(tmp_path), [], background.Resident.call
    monkeypatch.setattr(background.Resident, "call", lambda self, *a: started.append(self.low_priority) or call(self, *a))
    monkeypatch.setattr(background, "MAPPED_BYTES", 0)
    service.evaluate_ahead(emb, "env 4", "icm", settings, evaluation.LINEAR_PROBE, store)
    assert started == [True]
    with threadpool_limits(1, user_api="blas"):
        here = [([service.evaluate(emb, "env 4", config) for config in configs],
                 service.target_confusions(emb, "env 4", "icm", configs[0], evaluation.LINEAR_PROBE))
                for configs in settings]
    monkeypatch.setattr(evaluation, "evaluate_split", lambda *a, **kw: pytest.fail("evaluated again, not read back"))
    monkeypatch.setattr(evaluation, "predict_all", lambda *a, **kw: pytest.fail("predicted again, not read back"))
    for configs, (frames, matrices) in zip(settings, here):
        for config, frame in zip(configs, frames):
            pd.testing.assert_frame_equal(service.evaluate(emb, "env 4", config, store=store), frame, check_exact=True)
        kept = service.target_confusions(emb, "env 4", "icm", configs[0], evaluation.LINEAR_PROBE, store=store)
        assert kept.keys() == matrices.keys()
        for name in matrices:
            np.testing.assert_array_equal(kept[name], matrices[name])
    service.evaluate_ahead(emb, "env 4", "icm", settings, evaluation.LINEAR_PROBE, store)
    service.evaluate_ahead(emb, "env 4", "icm", [(_config(K=2),)], evaluation.LINEAR_PROBE, None)
    assert len(started) == 1  # everything kept; and nothing to keep it in


def test_the_evaluation_process_holds_the_data_set_between_calls_and_takes_another_in_its_place(emb, monkeypatch, tmp_path):
    """service.evaluate_ahead hands the data set over once: a second setting sends the process only its name; a
    new process (the old one ended) or another data set is handed it again."""
    from clip_icm import background, evaluation
    from clip_icm.service import fitting
    from clip_icm.store import EmbeddingStore

    store, handed, call = EmbeddingStore(tmp_path), [], background.Resident.call
    monkeypatch.setattr(background.Resident, "call",
                        lambda self, function, *args: handed.append(args[1] is not None) or call(self, function, *args))
    config = _config(K=3)
    process = fitting.EvaluationProcess()
    monkeypatch.setattr(fitting, "evaluation_process", lambda: process)
    try:
        service.evaluate_ahead(emb, "env 4", "icm", [(config,)], evaluation.LINEAR_PROBE, store)
        service.evaluate_ahead(emb, "env 4", "icm", [(_config(K=4),)], evaluation.LINEAR_PROBE, store)
        assert handed == [True, False]
        process.close()  # a new process: it does not hold the set, and says so
        process._handed = emb.key
        service.evaluate_ahead(emb, "env 4", "icm", [(_config(K=5),)], evaluation.LINEAR_PROBE, store)
        assert handed == [True, False, False, True]
        assert all(service.evaluated(emb, "env 4", "icm", (_config(K=k),), evaluation.LINEAR_PROBE,
                                     store) for k in (3, 4, 5))
    finally:
        process.close()
    np.testing.assert_array_equal(
        service.target_confusions(emb, "env 4", "icm", config, evaluation.LINEAR_PROBE, store=store)["icm"],
        service.target_confusions(emb, "env 4", "icm", config, evaluation.LINEAR_PROBE)["icm"])


def test_a_resident_process_is_kept_between_calls_and_replaced_after_it_died():
    import os

    from clip_icm import background

    resident = background.Resident()
    try:
        first = resident.call(os.getpid)
        assert resident.call(os.getpid) == first != os.getpid()  # one process for both calls, not this one
        with pytest.raises(ZeroDivisionError):  # what the call raised, and the process lives on
            resident.call(divmod, 1, 0)
        assert resident.call(os.getpid) == first
        with pytest.raises(background.ProcessEnded):
            resident.call(os._exit, 3)
        assert resident.call(os.getpid) not in (first, os.getpid())  # a new one
    finally:
        resident.close()


def test_background_run_returns_the_result_or_raises_what_the_process_raised():
    from clip_icm import background

    assert background.run(divmod, 17, 5) == (3, 2)
    with pytest.raises(ZeroDivisionError):
        background.run(divmod, 1, 0)
    # a large array reaches the process through a file it maps: the same values, read-only there
    big = np.arange(background.MAPPED_BYTES // 8 + 3, dtype=np.float64).reshape(-1, 1)
    assert background.run(np.sum, big[::1]) == big.sum()
    assert background.run(np.isfortran, np.asfortranarray(np.ones((2, background.MAPPED_BYTES // 16)))) is True
    with pytest.raises(ValueError, match="read-only"):
        background.run(np.put, big, [0], [1.0])
    assert big[0, 0] == 0.0


def test_accuracy_tables_and_confusions_are_kept_in_the_store_exactly(emb, tmp_path, monkeypatch):
    from clip_icm.store import EmbeddingStore

    config = _config(methods=("icm", "orth_cali"))  # Orth-Cali's probe is n/a (NaN): kept as such
    frame = service.evaluate(emb, "env 4", config, store=EmbeddingStore(tmp_path))
    matrices = service.target_confusions(emb, "env 4", "icm", config, store=EmbeddingStore(tmp_path))

    def refit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(evaluation, "evaluate_split", refit)
    monkeypatch.setattr(evaluation, "predict_all", refit)
    again = service.evaluate(emb, "env 4", config, store=EmbeddingStore(tmp_path))  # a restart
    pd.testing.assert_frame_equal(again, frame)  # values, NaN and dtypes
    assert frame.accuracy.isna().any()
    kept = service.target_confusions(emb, "env 4", "icm", config, store=EmbeddingStore(tmp_path))
    assert kept.keys() == matrices.keys()
    for name in matrices:
        np.testing.assert_array_equal(kept[name], matrices[name])
        assert kept[name].dtype == matrices[name].dtype
    with pytest.raises(AssertionError, match="fitted again"):  # another protocol is another result
        service.target_confusions(emb, "env 4", "icm", config, evaluation.ZERO_SHOT, store=EmbeddingStore(tmp_path))


def test_what_a_method_does_not_read_of_k_and_lam_is_fixed_so_its_results_are_shared(emb):
    fixed = {K: service.with_unused_fixed("augmentation", _config(K, 10.0 * K, ("augmentation",))) for K in (2, 6)}
    assert fixed[2] == fixed[6] and (fixed[2].n_components, fixed[2].lam) == (1, 1.0)
    pca = service.with_unused_fixed("pca", _config(6, 60.0, ("pca",)))  # PCA reads K only
    assert (pca.n_components, pca.lam) == (6, 1.0)
    assert service.with_unused_fixed("icm", _config(6, 60.0)) == _config(6, 60.0)
    # what it claims: the augmentation baseline's accuracies do not move with K and lam
    by_K = [service.evaluate(emb, "env 4", _config(K, 10.0 * K, ("augmentation",))) for K in (2, 6)]
    pd.testing.assert_series_equal(by_K[0].accuracy, by_K[1].accuracy)
    matrices = [service.target_confusions(emb, "env 4", "icm", _config(K)) for K in (2, 6)]
    np.testing.assert_array_equal(matrices[0]["CLIP"], matrices[1]["CLIP"])
    assert not np.array_equal(matrices[0]["icm"], matrices[1]["icm"])


def test_sweep_has_honest_and_peeking_columns(emb):
    frame = service.sweep(emb, "env 4", "icm", _config(), (2, 4), (10.0,))
    assert list(frame.K) == [2, 4]
    assert {"source_val_accuracy", "target_accuracy"} <= set(frame.columns)


def test_projection_defaults():
    demo = service.projection_defaults("demo", 128)
    assert (demo["K"], demo["lam"], demo["lam_mode"]) == (64, 1.0, "relative")
    assert demo["selection"] == "interventional" and demo["pair_sets"] == ("true:colour", "true:background")
    assert demo["baselines"] == ("pca", "augmentation")
    synthetic = service.projection_defaults("synthetic", 16)
    assert (synthetic["K"], synthetic["lam"], synthetic["lam_mode"]) == (8, 1.0, "relative")
    assert synthetic["selection"] == "interventional"  # the honest rule is every data set's default
    assert synthetic["pair_sets"] is None and synthetic["baselines"] == ("augmentation",)


def test_grid_fits_the_dimension_and_never_goes_below_k_8():
    Ks, lams = defaults.grid(16)
    assert Ks == (8,) and len(lams) == 5
    assert defaults.grid(128, "relative") == ((8, 16, 32, 64), (0.1, 0.3, 1.0, 3.0, 10.0))
    assert defaults.grid(512)[0] == (32, 64, 128, 256)
    assert defaults.grid(6)[0] == (3,)  # too small for K >= 8: half the dimensions


def test_confusion_counts_true_against_predicted():
    counts = service.confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])


def test_target_confusions_cover_the_target_rows(emb):
    matrices = service.target_confusions(emb, "env 4", "icm", _config())
    assert set(matrices) == {"CLIP", "icm"}
    for counts in matrices.values():
        assert counts.sum() == int((emb.domains == "env 4").sum())


def test_pair_examples_without_images_is_a_clear_error(emb):
    with pytest.raises(service.ServiceError, match="no image files to show"):
        service.pair_examples(service.EmbeddingRequest(source="synthetic"), emb, "true")


def test_restrict_domains_drops_rows_and_pairs(emb):
    small = service.restrict_domains(emb, ("env 1", "env 4"))
    assert small.domain_names == ["env 1", "env 4"]
    assert all(p.domains is None or set(p.domains) <= {"env 1", "env 4"} for p in small.pairs)
    assert small.key != emb.key


def test_points_predictions_and_neighbours(emb):
    ids = service.plot_ids(emb, max_points=50)
    assert len(ids) == 50 and np.all(np.diff(ids) > 0)
    predicted = service.predictions(emb)
    points = service.point_table(emb, ids, "env 4", predicted)
    assert (points["role"] == np.where(emb.domains[ids] == "env 4", "target", "source")).all()
    assert (points["correct"] == (predicted[ids] == emb.labels[ids])).all()
    nn = service.nearest_neighbours(emb.features, ids, [int(ids[0])], k=3)[int(ids[0])]
    assert len(nn) == 3 and int(ids[0]) not in nn and set(nn) <= set(ids.tolist())
    X = emb.features / np.linalg.norm(emb.features, axis=1, keepdims=True)
    sims = [X[int(ids[0])] @ X[j] for j in nn]
    assert sims == sorted(sims, reverse=True)
    with pytest.raises(ValueError, match="k must be"):
        service.nearest_neighbours(emb.features, ids, [0], k=0)


def test_synthetic_rows_have_no_thumbnail(emb):
    assert service.thumbnail(emb, 0) is None


def test_plot_ids_keep_every_point_or_a_stratified_share():
    from clip_icm.scm import make_embedding_set

    emb = make_embedding_set(SCMConfig(n_classes=3), n_per_domain=200)  # 4 domains x 200, 3 classes
    np.testing.assert_array_equal(service.plot_ids(emb, max_points=800), np.arange(800))
    ids = service.plot_ids(emb, max_points=100)
    assert len(ids) == 100 and np.all(np.diff(ids) > 0)
    for domain in emb.domain_names:
        for c in range(3):
            group = (emb.domains == domain) & (emb.labels == c)
            share = group.sum() * 100 / len(emb.labels)
            assert abs(int(group[ids].sum()) - share) < 1  # each group's share, rounded
    np.testing.assert_array_equal(ids, service.plot_ids(emb, max_points=100))  # seeded
    with pytest.raises(ValueError, match="max_points"):
        service.plot_ids(emb, max_points=0)


def test_plot_ids_never_exceed_the_draw_limit_and_a_subsample_is_announced(monkeypatch):
    from clip_icm.scm import make_embedding_set
    from clip_icm.service import maps

    emb = make_embedding_set(SCMConfig(n_classes=3), n_per_domain=200)  # 800 rows
    monkeypatch.setattr(maps, "DRAW_LIMIT", 300)
    ids = service.plot_ids(emb, max_points=10_000)
    assert len(ids) == 300 and len(set(ids.tolist())) == 300
    assert service.sample_note(len(ids), len(emb.labels)) == " · 300 of 800 images (stratified sample, seed 0)"
    assert service.sample_note(800, 800) == ""  # every point: nothing to say
    other = service.plot_ids(emb, max_points=300, seed=1)
    assert not np.array_equal(ids, other)  # the seed draws the sample...
    for domain in emb.domain_names:  # ...and each (domain, class) keeps its share whatever the seed
        for c in range(3):
            group = (emb.domains == domain) & (emb.labels == c)
            assert int(group[ids].sum()) == int(group[other].sum())


def test_layouts_are_stored_by_content(emb, tmp_path, monkeypatch):
    from clip_icm import reduce
    from clip_icm.store import EmbeddingStore

    store, calls = EmbeddingStore(tmp_path), []
    layout = reduce.layout_2d
    monkeypatch.setattr(reduce, "layout_2d", lambda *a, **kw: calls.append(1) or layout(*a, **kw))
    ids = service.plot_ids(emb, max_points=40)
    fit = service.fit(emb, "env 4", "icm", _config())
    first = service.full_layout(emb, ids, store=store)
    inv = service.invariant_layout(emb, ids, fit, first, store=store)
    assert len(calls) == 2
    np.testing.assert_array_equal(service.full_layout(emb, ids, store=EmbeddingStore(tmp_path)), first)  # a restart
    np.testing.assert_array_equal(service.invariant_layout(emb, ids, fit, first, store=store), inv)
    assert len(calls) == 2  # both read back
    other = service.fit(emb, "env 4", "icm", service.eval_config(4, 10.0))
    service.invariant_layout(emb, ids, other, first, store=store)
    assert len(calls) == 3  # another fit, another layout


def test_layouts_share_rows_and_init(emb):
    ids = service.plot_ids(emb, max_points=40)
    full = service.full_layout(emb, ids)
    inv = service.invariant_layout(emb, ids, service.fit(emb, "env 4", "icm", _config()), full)
    assert full.shape == inv.shape == (40, 2)


def test_projection_npz_round_trip(emb):
    fitted = service.fit(emb, "env 4", "icm", _config())
    data = np.load(io.BytesIO(service.projection_npz(fitted, emb, "toy-clip")))
    assert data["components"].shape == (4, 16)
    assert int(data["K"]) == 4 and float(data["lam"]) == 1000.0 and str(data["method"]) == "icm"
    assert str(data["model"]) == "toy-clip" and str(data["data_key"]) == emb.key
    assert list(data["domains"]) == emb.domain_names


def test_accuracy_csv_and_png(emb):
    table = service.accuracy_table([service.evaluate(emb, "env 4", _config())])
    back = pd.read_csv(io.BytesIO(service.accuracy_csv(table)))
    assert list(back.columns) == list(table.columns) and len(back) == len(table)
    from clip_icm.figures import accuracy_bars

    png = service.figure_png(accuracy_bars(table, "env 4"))
    assert png is None if not service.png_available() else png[:4] == b"\x89PNG"


def test_intervention_config_keeps_known_banks_and_builds_edited_ones():
    from clip_icm.interventions import TEXT_BANKS

    styles = TEXT_BANKS.get("styles").variants
    toy = service.text_banks(bundled_world=True)["toydomains"]
    assert "toydomains" not in service.text_banks(bundled_world=False)
    choice = service.InterventionChoice(image_ops=("grayscale",), text_banks=(
        ("styles", styles), ("contexts", ("a photo of a {} on the moon.",)), ("toydomains", toy.variants)),
        strengths=(("grayscale", ()),), n_pairs=0)
    cfg = service.intervention_config(choice)
    assert cfg.text_banks[0] == TEXT_BANKS.get("styles") and cfg.text_banks[2] == toy
    assert cfg.text_banks[1].variants == ("a photo of a {} on the moon.",) and cfg.n_pairs is None
    assert cfg.image == ("grayscale",) and cfg.strengths == (("grayscale", ()),)
    with pytest.raises(ValueError, match="placeholder"):
        service.intervention_config(service.InterventionChoice(text_banks=(("mine", ("no class here",)),)))


def test_playground_runs_small(emb):
    table = service.playground(SCMConfig(n_invariant=2, n_variant=2), (0.0, 1.0), 1e4)
    assert set(table["method"]) == {"CLIP", "icm", "icm_as_released"}
    with pytest.raises(service.ServiceError, match="shifts"):
        service.playground(SCMConfig(), (2.0,), 1e4)


def test_eval_config_is_hashable_for_caches():
    assert hash(_config()) == hash(_config()) and isinstance(_config(), evaluation.EvalConfig)
