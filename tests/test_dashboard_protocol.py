"""Dashboard: the protocol and task choices, and the centred invariance ratio (synthetic source, AppTest)."""
import pytest

from dashboard import cached
from tests.test_dashboard import _app, _ok, _page, _table


@pytest.fixture(autouse=True)
def clean_caches():
    cached.clear()
    yield
    cached.clear()


def test_protocol_is_named_and_orth_cali_probe_is_n_a():
    at = _app(ctl_baselines=["orth_cali"])
    _ok(at)
    assert any("Protocol: **this project**" in c.value for c in at.caption)
    table = _table(at)
    assert table.loc["Orth-Cali linear probe"].isna().all() and table.loc["Orth-Cali zero-shot"].notna().all()


def test_released_protocol_on_data_without_image_pairs_is_one_clear_error():
    at = _app(ctl_lam_mode="relative")
    at.sidebar.radio(key="ctl_protocol").set_value("released").run()
    assert not at.exception
    assert any("Protocol: **released code**" in c.value and "absolute" in c.value for c in at.caption)
    assert [e.value for e in at.error] and "fits on image pairs" in at.error[0].value


def test_open_class_task_shows_base_new_and_harmonic_mean():
    at = _app()
    at.sidebar.radio(key="ctl_task").set_value("open_class").run()
    _ok(at)
    table = at.dataframe[0].value
    assert ("env 4 (target)", "harmonic mean") in table.columns and ("env 4 (target)", "new") in table.columns
    assert "ICM" in table.index and "CLIP" in table.index
    # the target's table, then the sources': no table of every domain's twelve columns (it overflowed the page)
    assert {domain for domain, _ in table.columns} == {"env 4 (target)"} and len(table.columns) == 3
    sources = at.dataframe[1].value
    assert "env 4 (target)" not in {domain for domain, _ in sources.columns} and len(sources.columns) <= 9


def test_diagnostics_show_the_centred_ratio_beside_the_uncentred():
    at = _page("diagnostics.diagnostics_page", ctl_source="synthetic", ctl_n_synth=100)
    _ok(at)
    labels = [m.label for m in at.metric]
    assert labels[:2] == ["Invariance ratio ||ΔA|| / ||ZA||", "Centred invariance ratio ||ΔA|| / ||(Z − mean Z)A||"]
    assert float(at.metric[1].value) > float(at.metric[0].value)  # the mean flatters the uncentred ratio


def test_diagnostics_say_what_orth_cali_p0_removes():
    at = _page("diagnostics.diagnostics_page", ctl_source="synthetic", ctl_n_synth=100, ctl_baselines=["orth_cali"])
    _ok(at)
    notes = [c.value for c in (*at.caption, *at.warning) if "P0 removes" in c.value]
    assert len(notes) == 1 and notes[0].startswith("Orth-Cali: P0 removes") and "of D = " in notes[0]
    assert "between-class energy" in notes[0]
    without = _page("diagnostics.diagnostics_page", ctl_source="synthetic", ctl_n_synth=100, ctl_baselines=[])
    assert not [c.value for c in (*without.caption, *without.warning) if "P0 removes" in c.value]
