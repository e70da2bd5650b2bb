"""One self-contained HTML report of a setting: the story's figures and tables, written once.

A report is data rendered once (DESIGN.md, 20): the same service calls the dashboard makes, with the
same on-disk store, give the same rows and figures, and they are written into one file with plotly.js
inlined once and the thumbnails as data URIs, so that it opens with no network. Every name that comes
from a folder or a user (classes, domains, pair sets) is escaped: docs/SECURITY.md.

    from clip_icm import report
    html = report.build_html(emb, "sketch", config, report.Settings(model="toy-clip"), store=store)
    report.write("report.html", html)

``build`` returns the figures too, for :func:`write_images` (PNG and SVG with kaleido).
"""
from __future__ import annotations

import base64
import datetime
import html
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from clip_icm import choice, defaults, evaluation, figures, methods, service
from clip_icm.embeddings import EmbeddingSet
from clip_icm.errors import InvalidInput
from clip_icm.seeding import rng

Say = Callable[[str], None]
MAX_CLASSES_SHOWN = 12  # rows of the world's thumbnail grid; a data set with more shows its first ones
THUMB = 72  # pixels


@dataclass(frozen=True)
class Settings:
    """What the report shows beyond the embeddings, the target and the EvalConfig.

    method: the method whose maps, confusions and spectrum are drawn (beside CLIP); scoring: the rule
    that chooses its K and lam on source data (None: the config's K and lam, set by hand), scoring the
    ``select_for`` head (evaluation.LINEAR_PROBE or ZERO_SHOT, as the dashboard's control); model: the
    model's label, for the provenance; interventions: the pipeline's InterventionConfig, to draw the
    pairs (None: no pictures of them); every_target: the model choice for each domain held out in turn;
    choice_mode: what that choice reads (a name in defaults.CHOICE_MODES; never a target label).
    """

    method: str = "icm"
    scoring: str | None = defaults.SELECTION
    select_for: str = evaluation.LINEAR_PROBE
    model: str = ""
    interventions: object = None
    every_target: bool = True
    seed: int = 0
    max_points: int = service.MAP_POINTS
    choice_mode: str = defaults.CHOICE


@dataclass
class Report:
    html: str
    figures: dict = field(default_factory=dict)  # name -> plotly figure, in the order shown


def build_html(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig, settings: Settings = Settings(),
               store=None, say: Say | None = None, shortcut: np.ndarray | None = None) -> str:
    """The report as one HTML string (see :func:`build`)."""
    return build(emb, target, config, settings, store, say, shortcut).html


def build(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig, settings: Settings = Settings(),
          store=None, say: Say | None = None, shortcut: np.ndarray | None = None) -> Report:
    """The report of ``settings.method`` on ``target`` (every other domain a source); ``config``'s
    methods are the baselines drawn beside it. ``store`` (an EmbeddingStore): where the dashboard keeps
    its layouts and results, read and written here. ``say``: a line per long step. ``shortcut``: each
    row's value of the world's shortcut factor where it is known (the demo's true colour,
    service.true_factor): the maps are then coloured by it beside the class, as the Story's, instead
    of by domain."""
    say = say or (lambda _: None)
    if target not in emb.domain_names:
        raise InvalidInput(f"unknown domain {target!r}; domains: {', '.join(emb.domain_names)}")
    if shortcut is not None and len(shortcut) != len(emb.labels):
        raise InvalidInput(f"shortcut has {len(shortcut)} values for {len(emb.labels)} images")
    methods.METHODS.check((settings.method, *config.methods))
    parts = _Parts(emb, target, config, settings, store, say, shortcut)
    sections = [parts.world(), parts.maps(), parts.confusions(), parts.interventions(), parts.projection(),
                parts.result(), parts.provenance()]
    return Report(_page(emb, target, settings, sections), parts.figures)


def write(path: str | Path, text: str) -> None:
    """Write the report atomically (a reader never sees half a file)."""
    from clip_icm.store import atomic_write

    atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def write_images(figs: dict, folder: str | Path) -> list[Path]:
    """Each figure as ``<name>.png`` and ``<name>.svg`` in ``folder`` (created); needs kaleido."""
    if not service.png_available():
        raise InvalidInput("static images need kaleido, which is not installed: pip install '.[images]'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items():
        for suffix, make in (("png", service.figure_png), ("svg", service.figure_svg)):
            data = make(fig)
            if data is None:
                raise InvalidInput("kaleido could not export the figures (it needs a Chrome or Chromium it can "
                                   "start); the HTML report is written")
            (folder / f"{name}.{suffix}").write_bytes(data)
            written.append(folder / f"{name}.{suffix}")
    return written


# ---------------------------------------------------------------- the parts, in the story's order

class _Parts:
    """The report's sections; each returns HTML and adds its figures to ``self.figures``."""

    def __init__(self, emb: EmbeddingSet, target: str, config: evaluation.EvalConfig, settings: Settings, store,
                 say: Say, shortcut: np.ndarray | None) -> None:
        self.emb, self.target, self.config, self.settings = emb, target, config, settings
        self.store, self.say, self.figures, self.shortcut = store, say, {}, shortcut
        self.method = settings.method
        self.K, self.lam, self.chosen_by = self._k_lam()
        self.at = replace(config, n_components=self.K, lam=self.lam, methods=(self.method,))
        say(f"report: fitting {methods.label(self.method)} at K = {self.K}, lam = {self.lam:g}")
        self.fit = service.fit(emb, target, self.method, self.at)

    def _k_lam(self) -> tuple[int, float, str]:
        """The method's K and lam as the dashboard's Explorer gets them: its rule's choice (the rule's
        grid around the defaults, source data only) or the config's."""
        s, dim = self.settings, self.emb.features.shape[1]
        if s.scoring is None or not (methods.spec(self.method).tunes_k or methods.spec(self.method).tunes_lam):
            return self.config.n_components, self.config.lam, "set by hand"
        self.say(f"report: choosing K and lam by {evaluation.SCORING_LABELS[s.scoring]} (source data only)")
        start = replace(self.config, n_components=defaults.k(dim), lam=defaults.LAM, methods=(self.method,))
        Ks, lams = methods.spec(self.method).grid(dim, self.config.lam_mode, start.n_components, start.lam)
        K, lam, _ = service.choose_hyperparameters(self.emb, self.target, self.method, start, Ks, lams, s.scoring,
                                                   s.select_for, store=self.store)
        return K, lam, f"chosen by {evaluation.SCORING_LABELS[s.scoring]} ({s.select_for}) on source data only"

    def add(self, name: str, fig) -> str:
        self.figures[name] = fig
        return f'<div class="figure" id="figure-{name}">{fig.to_html(full_html=False, include_plotlyjs=False)}</div>'

    def world(self) -> str:
        emb, target = self.emb, self.target
        classes = list(range(min(len(emb.class_names), MAX_CLASSES_SHOWN)))
        domains = [d for d in emb.domain_names if d != target] + [target]
        head = "".join(f"<th>{_e(d)}{' (target)' if d == target else ' (source)'}</th>" for d in domains)
        rows = "".join(f"<tr><th>{_e(emb.class_names[c])}</th>"
                       + "".join(f"<td>{self._thumb(c, d)}</td>" for d in domains) + "</tr>" for c in classes)
        more = (f"<p class='note'>The first {MAX_CLASSES_SHOWN} of {len(emb.class_names)} classes.</p>"
                if len(emb.class_names) > MAX_CLASSES_SHOWN else "")
        counts = ", ".join(f"{_e(d)} {int((emb.domains == d).sum())}" for d in emb.domain_names)
        return _section("world", "1. The world and its shift",
                        f"<p>{len(emb.labels)} images of {len(emb.class_names)} classes in "
                        f"{len(emb.domain_names)} domains ({counts}). Every fit sees the source domains only; "
                        f"<b>{_e(target)}</b> is held out. One image per class and domain (drawn at random, "
                        "seeded): a shortcut that the sources share and the target breaks shows here.</p>"
                        f"<table class='thumbs'><tr><th></th>{head}</tr>{rows}</table>{more}")

    def _thumb(self, c: int, domain: str) -> str:
        rows = np.flatnonzero((self.emb.labels == c) & (self.emb.domains == domain))
        if not len(rows):
            return "<span class='note'>none</span>"
        row = int(rng("report thumbnail", self.settings.seed, domain, c).choice(rows))
        image = service.thumbnail(self.emb, row, size=THUMB)
        if image is None:
            return "<span class='note'>no image</span>"
        return _img(image, f"{self.emb.class_names[c]} / {domain}")

    def maps(self) -> str:
        emb, s = self.emb, self.settings
        ids = service.plot_ids(emb, s.max_points, s.seed)
        self.say(f"report: laying out {len(ids)} points in the full and the invariant space (UMAP; kept in the store)")
        full = service.full_layout(emb, ids, s.seed, self.store)
        inv = service.invariant_layout(emb, ids, self.fit, full, s.seed, self.store)
        full_points = service.point_table(emb, ids, self.target, service.predictions(emb))
        inv_points = service.point_table(emb, ids, self.target,
                                         service.predictions(emb, self.fit.projection, self.method))
        label = f"{methods.label(self.method)}, K = {self.K}, lam = {self.lam:g}"
        note = service.sample_note(len(ids), len(emb.labels), s.seed)
        # (file name, column coloured by, its words, its colours)
        second = ("domain", "domain", "domain", None)
        if self.shortcut is not None:  # the Story's second colouring: what the shortcut groups
            full_points[figures.SHORTCUT_COLUMN] = inv_points[figures.SHORTCUT_COLUMN] = self.shortcut[ids]
            second = ("shortcut", figures.SHORTCUT_COLUMN, "the shortcut (true colour)", figures.shortcut_colours())
        colourings = (("class", "class", "class", None), second)
        body = "".join(self.add(f"map_{space}_{name}", figures.scatter_layout(xy, points, column, f"{title}, by {words}"
                                                                             + note, colours))
                       for space, xy, points, title in (("full", full, full_points, "Full CLIP space"),
                                                        ("invariant", inv, inv_points, f"Invariant space ({label})"))
                       for name, column, words, colours in colourings)
        second_words = "by the shortcut (each image's true colour)" if self.shortcut is not None else "by domain"
        return _section("maps", "2. CLIP's map and the invariant map",
                        f"<p>UMAP of the image embeddings (circles: sources, crosses: the target), coloured by class "
                        f"and {second_words}. Where CLIP groups images by the shortcut rather than by class, the "
                        "target's points sit away from their class; the invariant map shows the same images "
                        f"after the projection. {len(ids)} of {len(emb.labels)} images drawn.</p>"
                        f"<div class='grid'>{body}</div>")

    def confusions(self) -> str:
        names = {evaluation.FULL_SPACE: "CLIP, full space", self.method: f"{methods.label(self.method)}, K = {self.K}"}
        body = ""
        for protocol in (evaluation.LINEAR_PROBE, evaluation.ZERO_SHOT):
            matrices = service.target_confusions(self.emb, self.target, self.method, self.at, protocol, self.store)
            titles = {m: f"{t} ({protocol})" for m, t in names.items()}
            key = protocol.replace(" ", "_").replace("-", "_")
            body += self.add(f"confusion_{key}", figures.confusion_heatmaps(matrices, self.emb.class_names, titles))
        return _section("confusions", f"3. What goes wrong on {_e(self.target)}",
                        "<p>Rows: the true class; columns: the predicted one; cells count images, coloured by their "
                        "share of the row. Off the diagonal is where a shortcut sends a class.</p>" + body)

    def interventions(self) -> str:
        cfg = self.settings.interventions
        intro = ("<p>Each pair is an image and its intervened version: what the intervention changes, the "
                 "projection learns to ignore.</p>")
        if cfg is None:
            return _section("interventions", "4. The interventions", intro + "<p class='note'>Not drawn: the report "
                            "was built without the intervention settings.</p>")
        names = list(self.config.pair_sets if self.config.pair_sets is not None else [p.name for p in self.emb.pairs])
        body = ""
        for name in names:
            try:
                examples = service.examples_of_pairs(cfg, self.emb, name)
            except service.ServiceError as err:
                body += f"<h3>{_e(name)}</h3><p class='note'>{_e(err)}</p>"
                continue
            cells = "".join(f"<div class='pair'>{_shown(ex.before, ex.caption)}{_shown(ex.after, 'intervened')}"
                            f"<div class='caption'>{_e(ex.caption)}</div></div>" for ex in examples)
            body += f"<h3>{_e(name)}</h3><div class='pairs'>{cells}</div>"
        return _section("interventions", "4. The interventions",
                        intro + f"<p>Fitted on: {_e(', '.join(names) or 'none')}.</p>" + body)

    def projection(self) -> str:
        fit, spec = self.fit, methods.spec(self.method)
        figure = (self.add("spectrum", figures.spectrum_figure(fit.eigenvalues, self.K, spec.spectrum))
                  if fit.eigenvalues is not None and spec.spectrum is not None
                  else f"<p class='note'>{_e(methods.label(self.method))} has no eigenvalue spectrum of M.</p>")
        ratios = self.add("invariance", figures.invariance_ratios(fit.full_ratio, fit.invariance_ratio,
                                                                  methods.label(self.method)))
        return _section("projection", "5. What the projection keeps and removes",
                        f"<p>{_e(methods.label(self.method))} keeps K = {self.K} directions (λ = {self.lam:g} "
                        f"{_e(self.config.lam_mode)}; {_e(self.chosen_by)}). The eigenvectors of M with the largest "
                        "eigenvalues vary much between images and little under the interventions. Invariance "
                        f"ratio ||ΔA|| / ||ZA||: <b>{fit.invariance_ratio:.3f}</b> (full space "
                        f"{fit.full_ratio:.3f}; centred {fit.centred_ratio:.3f}), measured on {_e(fit.ratio_pairs)}."
                        "</p>" + figure + ratios)

    def result(self) -> str:
        self.say(f"report: accuracy of {', '.join(methods.label(m) for m in self._shown_methods())} on every domain")
        table = self._accuracy()
        bars = self.add("accuracy", figures.accuracy_bars(table, self.target, f"Accuracy per domain "
                                                           f"({methods.label(self.method)}, K = {self.K}, "
                                                           f"lam = {self.lam:g})",
                                                           focus=(evaluation.FULL_SPACE, self.method)))
        wide = service.accuracy_wide(table, self.target)
        return _section("result", "6. The result, and which model to deploy",
                        bars + _frame_table(wide, percent=True) + self._choice() + self._overview())

    def _shown_methods(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.method, *self.config.methods)))

    def _accuracy(self) -> pd.DataFrame:
        """As the dashboard's accuracy chart: each method evaluated alone (a baseline that reads neither K
        nor lam once), merged with CLIP's rows."""
        configs = [service.with_unused_fixed(m, replace(self.at, methods=(m,))) for m in self._shown_methods()]
        frames = [service.evaluate(self.emb, self.target, c, self.store).assign(K=self.K, lam=self.lam)
                  for c in configs]
        return service.accuracy_table(frames)

    def _choice_config(self) -> evaluation.EvalConfig:
        """The setting the model choice starts from, as the dashboard's (its rule picks K and lam)."""
        return replace(self.config, n_components=defaults.k(self.emb.features.shape[1]), lam=defaults.LAM, methods=())

    def _evaluate_and_choose(self, target: str):
        return service.evaluate_and_choose(self.emb, target, self._choice_config(), self.store,
                                           mode=self.settings.choice_mode)

    def _choice(self) -> str:
        self.say(f"report: choosing the model to deploy on {self.target} ({self.settings.choice_mode})")
        try:
            frame, made = self._evaluate_and_choose(self.target)
        except service.ServiceError as err:
            return f"<p class='note'>No model choice for {_e(self.target)}: {_e(err)}</p>"
        row = choice.target_summary(frame, made)
        against = "; ".join(f"{v.difference * 100:+.1f} points vs {_e(v.versus)} (95 % interval {v.low * 100:+.1f} "
                            f"to {v.high * 100:+.1f}, McNemar p = {v.p_value:.2g}, n = {v.n})"
                            for v in made.versus_clip.itertuples())
        scores = self.add("choice", figures.choice_scores(made.table, self.target))
        checks = made.table.set_index("candidate")[["score", "se", *[c for c in made.table.columns
                                                                       if c.endswith(" accuracy")]]]
        shortfall = f"<p>{_e(made.shortfall)}</p>" if made.shortfall else ""
        return (f"<h3>The model to deploy on {_e(self.target)}</h3>"
                f"<p class='verdict'><b>Deploy {_e(row['chosen'])}</b> ({row['chosen_accuracy']:.1%} on "
                f"{_e(self.target)}). {_e(made.why)}</p>{shortfall}"
                f"<p>{_e(choice.rule_sentence(made.mode))} (docs/CHOICE.md). With the target's labels, "
                f"afterwards (a description, not used to choose): {against}.</p>" + scores + _frame_table(checks, percent=True))

    def _overview(self) -> str:
        if not self.settings.every_target:
            return ""
        rows = []
        for i, target in enumerate(self.emb.domain_names):
            self.say(f"report: every target at a glance: {target} ({i + 1}/{len(self.emb.domain_names)})")
            try:
                rows.append(choice.target_summary(*self._evaluate_and_choose(target)))
            except service.ServiceError as err:
                return f"<p class='note'>No overview of every target: {_e(err)}</p>"
        return "<h3>Every target at a glance</h3>" + overview_html(pd.DataFrame(rows))

    def provenance(self) -> str:
        rows = provenance(self.emb, self.target, self.config, self.settings, self.K, self.lam, self.chosen_by)
        body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows.items())
        return _section("provenance", "7. Provenance", f"<table class='numbers provenance'>{body}</table>")


def overview_html(frame: pd.DataFrame) -> str:
    """The every-target table (rows of choice.target_summary), the deployed cell marked, then in words
    where the projection is deployed and where not."""
    candidates = [c.label for c in choice.candidates()]
    head = "".join(f"<th>{_e(c)}</th>" for c in ["target", "K", "λ", *candidates, "deploy"])
    body = ""
    for row in frame.to_dict("records"):
        cells = [_e(row["target"]), str(row["K"]), f"{row['lam']:g}"]
        cells += [f"<b>{row[c]:.1%}</b>" if c == row["chosen"] else f"{row[c]:.1%}" for c in candidates]
        body += "<tr>" + "".join(f"<td>{c}</td>" for c in [*cells, _e(row["chosen"])]) + "</tr>"
    return (f"<table class='numbers overview'><tr>{head}</tr>{body}</table>"
            f"<p class='verdict'>{_e(where_it_helps(frame))}</p>"
            "<p class='note'>Deploy: chosen without the target's labels. The accuracies use them, to show the "
            "result.</p>")


def where_it_helps(frame: pd.DataFrame) -> str:
    """In plain sentences: on which targets the choice deploys a projection and on which not, and where
    a projected candidate beats CLIP's same head on the target anyway (a description: the target's
    labels only score)."""
    cands = choice.candidates()
    rows = frame.to_dict("records")
    deployed = {r["target"] for r in rows if choice.projects(next(c.method for c in cands if c.label == r["chosen"]))}
    said = []
    if deployed:
        said.append(f"The projection is deployed on {', '.join(sorted(deployed))}: there it beats the simpler models "
                    "on the source checks by more than their noise.")
    others = [r for r in rows if r["target"] not in deployed]
    if others:
        said.append(f"On {', '.join(r['target'] for r in others)} it is not: a simpler model "
                    f"({', '.join(sorted({r['chosen'] for r in others}))}) does as well on the source checks.")
    for r in others:
        for c in (c for c in cands if choice.projects(c.method)):
            clip = next(k for k in cands if k.method == evaluation.FULL_SPACE and k.protocol == c.protocol)
            if r[c.label] - r[clip.label] > 0.01:
                said.append(f"On {r['target']} the projection does help the {c.label.split()[-1]} head ({c.label} "
                            f"{r[c.label]:.1%} against {clip.label} {r[clip.label]:.1%}), but {r['chosen']} reaches "
                            f"{r['chosen_accuracy']:.1%} without it.")
    return " ".join(said)


# ---------------------------------------------------------------- provenance and the page

def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clip-icm-explorer")
    except PackageNotFoundError:  # run from a checkout: its pyproject says
        import re

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return f"{found.group(1)} (a checkout, not installed)" if found else "unknown (not installed)"


def provenance(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig, settings: Settings, K: int,
               lam: float, chosen_by: str) -> dict[str, str]:
    """What the report was made with, as label -> text."""
    pair_sets = ", ".join(config.pair_sets) if config.pair_sets is not None else "all built"
    dataset, folder = emb.origin.get("dataset", "unknown"), emb.origin.get("folder")
    return {
        "package": f"clip-icm-explorer {_version()}",
        "model": settings.model or emb.origin.get("model", "unknown"),
        "data set": f"{dataset} ({folder})" if folder else dataset,  # the demo's folder is not recorded
        "embeddings content key": emb.key or "none (embeddings made in memory)",
        "images": f"{len(emb.labels)}, D = {emb.features.shape[1]}",
        "target": target,
        "method": f"{methods.label(settings.method)}, K = {K}, λ = {lam:g} {config.lam_mode} ({chosen_by})",
        "baselines": ", ".join(methods.label(m) for m in config.methods if m != settings.method) or "none",
        "pair sets fitted on": pair_sets,
        "zero-shot prompts": evaluation.PROMPT_SETS[config.prompts],
        "protocol": config.protocol,
        "seed": str(settings.seed),
        "made": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } section { margin: 2.5em 0; } .note { color: #666; font-size: 0.9em; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0.5em; }
table { border-collapse: collapse; margin: 0.8em 0; } td, th { padding: 2px 6px; text-align: center; }
table.numbers td, table.numbers th { border-bottom: 1px solid #ddd; } table.provenance th { text-align: left; }
table.provenance td { text-align: left; } .pairs { display: flex; flex-wrap: wrap; gap: 1em; }
.pair { text-align: center; } .pair img { margin: 2px; } .caption { font-size: 0.85em; color: #444; }
.verdict { background: #eef7ee; padding: 0.6em; border-left: 4px solid #2ca02c; }
"""


def _page(emb: EmbeddingSet, target: str, settings: Settings, sections: list[str]) -> str:
    from plotly.offline import get_plotlyjs

    title = f"CLIP-ICM report: {emb.origin.get('dataset', 'embeddings')}, target {target}"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{STYLE}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>{_e(title)}</h1><p class='note'>One self-contained file: it needs no network. The numbers are "
            "the dashboard's for the same settings (the same functions, the same store).</p>"
            + "".join(sections) + "</body></html>")


def _section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{title}</h2>{body}</section>"


def _e(value: object) -> str:
    return html.escape(str(value))


def _img(image, alt: str) -> str:
    """A PIL image as an <img> with a PNG data URI (the file carries its pictures)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return f"<img src='data:image/png;base64,{data}' alt='{_e(alt)}' width='{image.width}' height='{image.height}'>"


def _shown(item: object, caption: str) -> str:
    """An example's side: a picture, or a caption in quotes."""
    return f"<code>{_e(item)}</code>" if isinstance(item, str) else _img(item.resize((THUMB, THUMB)), caption)


def _frame_table(frame: pd.DataFrame, percent: bool = False) -> str:
    """A small frame as an escaped HTML table (numbers as percentages where ``percent``)."""
    def cell(v: object) -> str:
        if isinstance(v, (float, np.floating)):
            return "n/a" if np.isnan(v) else (f"{v:.1%}" if percent else f"{v:.3f}")
        return _e(v)

    head = "".join(f"<th>{_e(c)}</th>" for c in ["", *frame.columns])
    body = "".join("<tr><th>" + _e(i) + "</th>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for i, row in zip(frame.index, frame.itertuples(index=False)))
    return f"<table class='numbers'><tr>{head}</tr>{body}</table>"
