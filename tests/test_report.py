"""The one-file report (issue 25, item 3): ``python -m clip_icm report`` and clip_icm.report write one HTML
file that opens with the network off and draws every figure, whose numbers are the dashboard's for the
same settings, with every name escaped, and bad input answered in one line."""
import dataclasses
import html
import os
import re
from pathlib import Path

import numpy as np
import pytest

from clip_icm import choice, cli, defaults, evaluation, figures, methods, report, service
from clip_icm.errors import InvalidInput
from clip_icm.scm import SCMConfig, make_embedding_set
from clip_icm.store import EmbeddingStore

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small ToyDomains folder (factors.csv included, so the true swaps are drawn), its report written
    by the CLI once, and the embeddings the CLI used (from the same store)."""
    from clip_icm.toydomains import generate_toydomains

    base = tmp_path_factory.mktemp("report")
    root = generate_toydomains(base / "toy", n_per_class_per_domain=4, image_size=32)
    out = base / "toy.html"
    argv = ["report", "--root", str(root), *ARGS, "--out", str(out)]
    assert cli.main(argv) == 0
    args = cli.build_parser().parse_args(argv)
    emb = cli._embed(args, cli._configs(args)).embeddings
    return dataclasses.make_dataclass("World", ["root", "out", "emb"])(root, out, emb)


def _no_browser() -> bool:
    return not Path(CHROMIUM).exists() and os.environ.get("CI", "").lower() != "true"


@pytest.mark.skipif(_no_browser(), reason=f"no browser at {CHROMIUM}: sudo apt-get install chromium")
def test_the_report_opens_offline_in_chromium_and_draws_every_figure_and_image(world):
    from playwright.sync_api import sync_playwright

    from plotly.offline import get_plotlyjs

    text = world.out.read_text()
    assert text.count(get_plotlyjs()[:300]) == 1 and not re.search(r"<script[^>]*\ssrc=", text)  # inlined, once
    n_figures = text.count("<div class=\"figure\"")
    assert n_figures == 10  # 4 maps, 2 confusions, spectrum, invariance, accuracy, the choice's scores
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(offline=True)
        asked = []  # every request that is not the file itself or an embedded image: none may be made

        def only_the_file(route):
            if route.request.url.startswith(("file:", "data:")):
                return route.continue_()
            asked.append(route.request.url)
            return route.abort()

        context.route("**/*", only_the_file)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(world.out.as_uri())
        page.wait_for_function("[...document.querySelectorAll('div.figure')].every(f => f.querySelector('.main-svg'))",
                               timeout=60_000)
        drawn = page.evaluate("[...document.querySelectorAll('div.figure')].map(f => "
                              "f.querySelectorAll('.main-svg').length)")
        images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        browser.close()
    assert len(drawn) == n_figures and all(n >= 1 for n in drawn)
    assert len(images) >= 8 * 4 + 2 * 4 * 2 and all(images)  # a thumbnail per class and domain, then the pairs
    assert not asked and not errors


def _dashboard_numbers(emb, target: str) -> dict:
    """What the Explorer shows for a folder with the default settings, computed as its pages call the
    service (dashboard/pages.py), without the store: computed afresh, not read back."""
    dim = emb.features.shape[1]
    start = service.projection_defaults("folder", dim)
    config = service.eval_config(start["K"], start["lam"], start["lam_mode"], ("icm",), start["pair_sets"])
    Ks, lams = methods.spec("icm").grid(dim, start["lam_mode"], start["K"], start["lam"])
    K, lam, _ = service.choose_hyperparameters(emb, target, "icm", config, Ks, lams, start["selection"],
                                               evaluation.LINEAR_PROBE)
    at = {m: service.eval_config(K, lam, start["lam_mode"], (m,), start["pair_sets"]) for m in ("icm", *start["baselines"])}
    frames = [service.evaluate(emb, target, service.with_unused_fixed(m, c)).assign(K=K, lam=lam) for m, c in at.items()]
    choice_config = service.eval_config(defaults.k(dim), defaults.LAM, start["lam_mode"], (), start["pair_sets"])
    # The shown target and one other: each choice is fitted afresh here (seconds each on a busy machine)
    overview = [choice.target_summary(*service.evaluate_and_choose(emb, t, choice_config))
                for t in dict.fromkeys([emb.domain_names[0], target])]
    return dict(K=K, lam=lam, table=service.accuracy_table(frames), overview=overview,
                confusions=service.target_confusions(emb, target, "icm", at["icm"], evaluation.LINEAR_PROBE),
                fit=service.fit(emb, target, "icm", at["icm"]))


def _overview_cells(row: dict) -> str:
    """The every-target table's row as the report writes it."""
    labels = [c.label for c in choice.candidates()]
    cells = [row["target"], str(row["K"]), f"{row['lam']:g}"]
    cells += [f"<b>{row[c]:.1%}</b>" if c == row["chosen"] else f"{row[c]:.1%}" for c in labels] + [row["chosen"]]
    return "".join(f"<td>{c}</td>" for c in cells)


def test_the_reports_numbers_are_the_dashboards(world):
    emb = world.emb
    target = service.default_target(emb, "folder")
    seen = _dashboard_numbers(emb, target)
    dim = emb.features.shape[1]
    # The report as the dashboard would ask for it (its config, its store), the CLI's file beside it.
    config = service.eval_config(defaults.k(dim), defaults.LAM, defaults.LAM_MODE, ("augmentation",))
    made = report.build(emb, target, config, report.Settings(every_target=True), store=EmbeddingStore())
    bars = {trace.name: list(trace.y) for trace in made.figures["accuracy"].data}
    domains = list(dict.fromkeys(seen["table"].domain))  # the chart's order
    for label, rows in seen["table"].groupby("label", sort=False):
        assert np.allclose(bars[label], rows.set_index("domain").reindex(domains).accuracy, equal_nan=True)
    heat = made.figures["confusion_linear_probe"].data
    assert [np.asarray(h.text).tolist() for h in heat] == [m.tolist() for m in seen["confusions"].values()]
    assert f"K = {seen['K']}, λ = {seen['lam']:g} relative" in made.html
    assert f"<b>{seen['fit'].invariance_ratio:.3f}</b>" in made.html
    for text in (made.html, world.out.read_text()):
        for row in seen["overview"]:
            assert _overview_cells(row) in text
        assert f"<b>Deploy {seen['overview'][-1]['chosen']}</b>" in text  # the target's choice: the last domain


def test_markup_in_class_and_domain_names_is_shown_as_text():
    evil_domain, evil_class = "<b>photo</b>", "<img src=x onerror=alert(1)>"
    emb = make_embedding_set(SCMConfig(n_invariant=3, n_variant=3, dim=12, n_classes=3), n_per_domain=20,
                             domains=(evil_domain, "art", "</script><i>sketch</i>"))
    emb = dataclasses.replace(emb, class_names=[evil_class, "b&c", "c"])
    config = service.eval_config(4, 1.0, methods=("pca",))
    made = report.build(emb, "</script><i>sketch</i>", config, report.Settings(every_target=False))
    text = made.html
    for name in (evil_domain, evil_class, "</script><i>sketch</i>"):
        assert name not in text
        assert html.escape(name) in text  # shown, as text
    assert len(re.findall(r"<script\b", text)) == 1 + len(made.figures)  # plotly.js once, then one per figure


def test_maps_of_a_sample_say_so_in_their_titles():
    emb = make_embedding_set(SCMConfig(n_invariant=3, n_variant=3, dim=12, n_classes=3), n_per_domain=20)
    made = report.build(emb, emb.domain_names[-1], service.eval_config(4, 1.0, methods=("pca",)),
                        report.Settings(every_target=False, max_points=30))
    titles = [made.figures[name].layout.title.text for name in made.figures if name.startswith("map_")]
    assert len(titles) == 4 and all(t.endswith(" · 30 of 80 images (stratified sample, seed 0)") for t in titles)
    assert sum(len(trace.x) for trace in made.figures["map_full_class"].data) == 30  # the sample, not every row


def test_a_toydomains_worlds_maps_are_coloured_by_its_shortcut_as_the_storys(world):
    """Where the world knows each image's true colour (its shortcut), the report's second colouring is that
    colour, each drawn in its own colour, as the Story's; elsewhere it is the domain."""
    shortcut = service.true_factor_in(world.root, world.emb)
    assert shortcut is not None and len(shortcut) == len(world.emb.labels)
    settings = report.Settings(every_target=False)
    config = service.eval_config(4, 1.0, methods=())
    made = report.build(world.emb, "sketch", config, settings, shortcut=shortcut)
    assert [n for n in made.figures if n.startswith("map_")] == ["map_full_class", "map_full_shortcut",
                                                                 "map_invariant_class", "map_invariant_shortcut"]
    fig = made.figures["map_full_shortcut"]
    assert ", by the shortcut (true colour)" in fig.layout.title.text
    colours = {trace.name.split(" (")[0]: trace.marker.color for trace in fig.data}
    assert colours and all(colours[name] == figures.shortcut_colours()[name] for name in colours)
    assert set(colours) <= set(shortcut)
    assert "by the shortcut (true colour)" in world.out.read_text()  # the CLI's report of that world too
    plain = report.build(world.emb, "sketch", config, settings)
    assert "map_full_domain" in plain.figures and "map_full_shortcut" not in plain.figures
    with pytest.raises(InvalidInput, match="shortcut has 3 values for"):
        report.build(world.emb, "sketch", config, settings, shortcut=shortcut[:3])
    assert service.true_factor_in(world.root.parent, world.emb) is None  # no factors.csv there


def test_bad_input_is_one_line(world, tmp_path, capsys, monkeypatch):
    base = ["report", "--root", str(world.root), *ARGS]
    read_only = tmp_path / "locked.html"
    read_only.write_text("")
    read_only.chmod(0o444)
    cases = [
        ([*base, "--out", str(tmp_path)], "is a folder"),
        ([*base, "--out", str(tmp_path / "no" / "r.html")], "does not exist"),
        ([*base, "--out", str(tmp_path / "r.pdf")], "--out must end in .html"),
        ([*base, "--out", str(tmp_path / "r.html"), "--target", "moon"], "unknown domain 'moon'"),
        ([*base, "--out", str(tmp_path / "r.html"), "--k", "0"], "--k must be at least 1"),
        ([*base, "--out", str(tmp_path / "r.html"), "--methods", "nope"], "nope"),
    ]
    if os.geteuid() != 0:  # root writes a read-only file anyway
        cases.append(([*base, "--out", str(read_only)], "is read-only"))
    for argv, said in cases:
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err
    monkeypatch.setattr(service, "png_available", lambda: False)  # kaleido is an extra
    assert cli.main([*base, "--out", str(tmp_path / "r.html"), "--images", str(tmp_path / "img")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--images needs kaleido" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.html").exists()  # refused before any work
    with pytest.raises(report.InvalidInput, match="static images need kaleido"):
        report.write_images({}, tmp_path / "img")


def test_the_library_refuses_an_unknown_target_or_method():
    emb = make_embedding_set(SCMConfig(n_invariant=3, n_variant=3, dim=12, n_classes=3), n_per_domain=20)
    with pytest.raises(report.InvalidInput, match="unknown domain 'moon'"):
        report.build(emb, "moon", service.eval_config(4, 1.0))
    with pytest.raises(KeyError, match="nope"):
        report.build(emb, "sketch", service.eval_config(4, 1.0), report.Settings(method="nope"))


def test_static_images_are_a_png_and_an_svg_per_figure_or_one_line_why_not(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    figs = {"accuracy": go.Figure(go.Bar(y=[1, 2])), "spectrum": go.Figure(go.Scatter(y=[3, 1]))}
    monkeypatch.setattr(service, "png_available", lambda: True)
    monkeypatch.setattr(service, "figure_png", lambda fig: b"png of " + fig.data[0].type.encode())
    monkeypatch.setattr(service, "figure_svg", lambda fig: b"svg of " + fig.data[0].type.encode())
    written = report.write_images(figs, tmp_path / "img")
    assert sorted(p.name for p in written) == ["accuracy.png", "accuracy.svg", "spectrum.png", "spectrum.svg"]
    assert (tmp_path / "img" / "spectrum.svg").read_bytes() == b"svg of scatter"
    monkeypatch.setattr(service, "figure_png", lambda fig: None)  # kaleido there, but no browser it can start
    with pytest.raises(report.InvalidInput, match="kaleido could not export the figures"):
        report.write_images(figs, tmp_path / "img2")
