"""One spec per method (clip_icm.methods): what each front end reads from it, and that adding a
method is one entry that every front end then lists."""
from dataclasses import replace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from clip_icm import evaluation, figures, methods, scm, service
from clip_icm.cli import build_parser
from clip_icm.errors import InvalidInput, UnknownName, UserError
from clip_icm.methods import ALL_METHODS, METHODS, SPECS, MethodSpec
from clip_icm.registry import Registry
from dashboard import cached
from tests.test_dashboard import APP, _table

NEW = MethodSpec("pca_again", "PCA again", "PCA under another name", "#123456", "PCAProjection", (),
                 ("n_components",), spectrum="top")


@pytest.fixture
def one_more_method(monkeypatch):
    """NEW added the way a contributor would: one more entry in SPECS (and so in the registry)."""
    specs = (*SPECS, NEW)
    registry = Registry("projection method")
    for spec in specs:
        registry.register(spec.name, spec)
    monkeypatch.setattr(methods, "SPECS", specs)
    monkeypatch.setattr(methods, "METHODS", registry)
    monkeypatch.setattr(methods, "ALL_METHODS", tuple(s.name for s in specs))
    cached.clear()
    yield NEW
    cached.clear()


def _emb():
    return scm.make_embedding_set(scm.SCMConfig(), n_per_domain=60)


def test_every_spec_builds_its_estimator_with_only_the_hyperparameters_it_takes():
    for spec in SPECS:
        est = spec.build(5, 2.0, "relative")
        params = est.get_params()
        assert ("n_components" in params and params["n_components"] == 5) == spec.tunes_k, spec.name
        assert (params.get("lam") == 2.0) == spec.tunes_lam, spec.name
        for name, value in spec.fixed:
            assert params[name] == value
    assert METHODS.get("icm").build(5, 2.0, "relative").get_params()["lam_mode"] == "relative"
    with pytest.raises(InvalidInput, match="full space"):
        methods.FULL_SPACE.build(5, 2.0)


def test_grid_holds_a_hyperparameter_the_method_does_not_take_at_its_given_value():
    icm_Ks, icm_lams = METHODS.get("icm").grid(128, "relative", 32, 1.0)
    assert len(icm_Ks) > 1 and len(icm_lams) > 1
    assert METHODS.get("pca").grid(128, "relative", 32, 1.0) == (icm_Ks, (1.0,))
    assert METHODS.get("augmentation").grid(128, "relative", 32, 1.0) == ((32,), (1.0,))


def test_unknown_method_is_one_error_type_listing_the_valid_names():
    with pytest.raises(UnknownName) as info:
        methods.make_projection("icn", 3, 1.0)
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, ValueError) and isinstance(err, UserError)
    assert str(err) == f"unknown projection method 'icn'; available: {', '.join(sorted(ALL_METHODS))}"
    with pytest.raises(UnknownName):
        evaluation.evaluate_split(_emb(), "sketch", evaluation.EvalConfig(n_components=4, methods=("icn",)))


@pytest.mark.parametrize("bad", [dict(fits_on="images"), dict(zero_shot="euclid"), dict(spectrum="bottom"),
                                 dict(hyperparameters=("K",))])
def test_a_spec_with_a_bad_field_is_refused(bad):
    with pytest.raises(InvalidInput):
        replace(NEW, **bad)


def test_front_ends_read_labels_colours_and_spectra_from_the_specs():
    for spec in SPECS:
        assert service.method_label(spec.name) == spec.label
        bars = figures.accuracy_bars(_bars_table(spec.name, spec.label), "sketch")
        assert bars.data[0].marker.color == spec.colour
    assert service.method_label(evaluation.FULL_SPACE) == "CLIP"
    assert [s.name for s in SPECS if s.spectrum] == ["icm", "icm_as_released", "pca"]
    playground = scm.run_playground(scm.SCMConfig(), (0.0, 1.0), 400, 200)
    assert list(dict.fromkeys(playground.method)) == list(scm.PLAYGROUND_METHODS)
    assert {service.method_label(m) for m in scm.PLAYGROUND_METHODS} == {"CLIP", "ICM", "ICM (as released)"}


def _bars_table(method, label):
    import pandas as pd

    return pd.DataFrame([dict(domain="sketch", method=method, protocol="linear probe", label=label, accuracy=0.5)])


def test_a_new_method_is_one_entry_and_every_front_end_lists_it(one_more_method):
    spec = one_more_method
    help_text = build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert all(name in help_text for name in (*ALL_METHODS, spec.name))
    emb = _emb()
    config = evaluation.EvalConfig(n_components=4, lam_mode="relative", lam=1.0, methods=("icm", spec.name))
    frame = evaluation.evaluate_split(emb, "sketch", config)
    pca = evaluation.evaluate_split(emb, "sketch", replace(config, methods=("pca",)))
    ours = frame[frame.method == spec.name].accuracy.to_numpy()
    np.testing.assert_allclose(ours, pca[pca.method == "pca"].accuracy.to_numpy())  # it is PCA
    table = service.accuracy_table([frame])
    assert list(dict.fromkeys(table.method)) == ["CLIP", "icm", spec.name]  # display order: SPECS
    assert f"{spec.label} linear probe" in set(table.label)
    assert figures.accuracy_bars(table, "sketch").data[-1].marker.color == spec.colour
    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params["page"] = "explorer"  # "/" opens the Story
    for key, value in {"ctl_source": "synthetic", "ctl_n_synth": 60, "ctl_baselines": [spec.name]}.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert spec.label in at.selectbox(key="ctl_method").options
    assert f"{spec.label} linear probe" in _table(at).index


@pytest.mark.parametrize("method, k_used, lam_used", [("icm", True, True), ("pca", True, False),
                                                      ("augmentation", False, False)])
def test_a_slider_the_method_does_not_use_is_greyed_out(method, k_used, lam_used):
    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params["page"] = "explorer"  # "/" opens the Story
    for key, value in {"ctl_source": "synthetic", "ctl_n_synth": 60, "ctl_method": method}.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.slider(key="ctl_K").disabled is not k_used
    assert at.sidebar.select_slider(key="ctl_lam").disabled is not lam_used
