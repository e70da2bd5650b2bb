"""ToyDomains + toy-clip: the numbers of the bundled demo (bench/RESULTS.md, "ToyDomains").

    python -m bench.toy_demo_results [--model toy-clip] [--scoring source_val source_domains]

Prints, as markdown: toy-clip's zero-shot accuracy per domain; then, on the spurious split
(target = the demo's target domain, where the colour/background shortcut is reversed), the
full-space (CLIP) vs ICM linear probe and zero-shot for each family of interventions, with
K and lam chosen on source-domain data only (``select_hyperparameters`` with "source_val" =
training-domain validation, and "source_domains" = leave one source domain out), plus one
fixed setting declared before looking (K=32, relative lam=1). Target labels are only
ever used to score.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd

from clip_icm import evaluation as ev
from clip_icm import toydomains as td
from clip_icm.backend import ModelConfig
from clip_icm.pipeline import DataConfig, InterventionConfig, build_embedding_set

TARGET = td.DEMO_RECIPE.target_domain
FAMILIES = {
    "photometric (7 ops, one at random per pair)": ("image:random",),
    "true swaps: colour + background + style": ("true:colour", "true:background", "true:style"),
    "true swap: colour": ("true:colour",),
    "true swap: background": ("true:background",),
    "true swap: style": ("true:style",),
    "text: toydomains bank (toy-clip's words)": ("text:toydomains",),
    "text: generic styles + contexts banks": ("text:styles", "text:contexts"),
}
KS = (8, 16, 32, 64)
LAMS = (0.1, 0.3, 1.0, 3.0, 10.0)  # relative: lam * tr(Z'Z) / tr(Delta'Delta)
FIXED = (32, 1.0)  # declared before any target number was seen
# Where the sweep below shows the target recovering; found by LOOKING at target accuracy, so
# rows with it are labelled as such (it held on two other data seeds, see RESULTS.md).
BAND = (16, 3.0)
SWEEP_KS, SWEEP_LAMS = (8, 16, 32, 64), (0.3, 1.0, 3.0, 10.0, 30.0)


def markdown(frame: pd.DataFrame) -> str:
    """A markdown table (pandas' to_markdown needs tabulate, which is not a dependency)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def embeddings(model: str):
    cfg = InterventionConfig(text_banks=(td.text_bank(), "styles", "contexts"),
                             true_swaps=("colour", "background", "style"))
    return build_embedding_set(DataConfig(), ModelConfig(name=model), cfg)


def zero_shot_table(emb) -> pd.DataFrame:
    pred = ev.zero_shot_predict(emb.features, emb.text_features)
    return pd.DataFrame([dict(domain=d, accuracy=float(np.mean(pred[emb.domains == d] == emb.labels[emb.domains == d])),
                              n=int(np.sum(emb.domains == d))) for d in emb.domain_names])


def _pick(frame: pd.DataFrame, method: str, protocol: str, role: str) -> float:
    sel = frame[(frame.method == method) & (frame.protocol == protocol) & (frame.role == role)]
    return float(sel.accuracy.mean())


def family_rows(emb, scorings: tuple[str, ...]) -> pd.DataFrame:
    """Target (and source-validation) accuracy per intervention family and (K, lam) choice."""
    rows = []
    for label, pair_sets in FAMILIES.items():
        base = ev.EvalConfig(lam_mode="relative", methods=("icm",), pair_sets=pair_sets)
        choices = [("fixed in advance", FIXED), ("target-informed band", BAND)]
        for scoring in scorings:
            K, lam, _ = ev.select_hyperparameters(emb, TARGET, "icm", KS, LAMS, base, scoring=scoring)
            choices.append((scoring, (K, lam)))
        for how, (k, l) in choices:
            frame = ev.evaluate_split(emb, TARGET, ev.EvalConfig(n_components=k, lam=l, lam_mode="relative",
                                                                 methods=("icm",), pair_sets=pair_sets))
            rows.append({
                "interventions": label, "K, lam chosen by": how, "K": k, "lam": f"{l:g}",
                "probe CLIP": _pick(frame, ev.FULL_SPACE, ev.LINEAR_PROBE, "target"),
                "probe ICM": _pick(frame, "icm", ev.LINEAR_PROBE, "target"),
                "zero-shot CLIP": _pick(frame, ev.FULL_SPACE, ev.ZERO_SHOT, "target"),
                "zero-shot ICM": _pick(frame, "icm", ev.ZERO_SHOT, "target"),
                "src-val probe CLIP": _pick(frame, ev.FULL_SPACE, ev.LINEAR_PROBE, "source"),
                "src-val probe ICM": _pick(frame, "icm", ev.LINEAR_PROBE, "source"),
            })
    return pd.DataFrame(rows)


def sweep_tables(emb, pair_sets: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Source-validation and target accuracy over (K, lam): to SHOW the gap, not to choose."""
    base = ev.EvalConfig(lam_mode="relative", methods=("icm",), pair_sets=pair_sets)
    s = ev.sweep(emb, TARGET, "icm", SWEEP_KS, SWEEP_LAMS, base)
    def grid(col: str) -> pd.DataFrame:
        g = s.pivot(index="K", columns="lam", values=col)
        return g.rename(columns=lambda c: f"lam {c:g}").reset_index()
    return grid("source_val_accuracy"), grid("target_accuracy")


def delta_ratios(emb) -> pd.DataFrame:
    """||Delta|| / ||Z|| per pair set: how far each intervention moves an embedding."""
    return pd.DataFrame([dict(pair_set=p.name, kind=p.kind, n=len(p.z),
                              ratio=float(np.linalg.norm(p.z - p.z_do) / np.linalg.norm(p.z))) for p in emb.pairs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-clip")
    parser.add_argument("--scoring", nargs="*", default=sorted(ev.SCORINGS), choices=sorted(ev.SCORINGS),
                        help="how K and lam are chosen on source data (default: both)")
    args = parser.parse_args()
    t0 = time.time()
    emb = embeddings(args.model)
    t_embed = time.time() - t0
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; model {args.model}; "
          f"{len(emb.labels)} images, D={emb.features.shape[1]}; embedding {t_embed:.0f} s "
          f"(cached vectors are reused on a rerun)\n")
    print("zero-shot accuracy per domain (CLIP, 'ensemble' templates):\n")
    print(zero_shot_table(emb).pipe(markdown), "\n")
    print("||Delta|| / ||Z|| of each pair set:\n")
    print(delta_ratios(emb).pipe(markdown), "\n")
    t1 = time.time()
    print(f"spurious split, target = {TARGET} (shortcut reversed there), K, lam chosen by: fixed = declared in advance, else select_hyperparameters scoring:\n")
    print(family_rows(emb, tuple(args.scoring)).pipe(markdown))
    for label in ("true swaps: colour + background + style", "photometric (7 ops, one at random per pair)"):
        src, tgt = sweep_tables(emb, FAMILIES[label])
        print(f"\nsweep, {label}, linear probe: source validation accuracy\n")
        print(src.pipe(markdown))
        print(f"\nsame grid, target ({TARGET}) accuracy (for teaching; never used to choose):\n")
        print(tgt.pipe(markdown))
    print(f"\nevaluation {time.time() - t1:.0f} s")


if __name__ == "__main__":
    main()
