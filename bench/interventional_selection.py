"""The demo's story across seeded worlds: which K/lam selection rule finds ICM's benefit honestly.

    python -m bench.interventional_selection [--seeds 0 1 2]

For each ToyDomains world (seed 0 is the bundled demo; others are the same recipe with another
seed, never tuned on), target = the demo's shifted domain (cartoon): K and lam are chosen on
source data only by each rule (source_val, source_domains, interventional), and the target is
scored for CLIP (full space), PCA and augmentation at the chosen K, and ICM; linear probe with
the class-name prompts, zero-shot with the "usual source look" prompts (chosen by the zero-shot
form of the rule). Then the interventional rule with the "conflict" check (validation rows wearing
another class's usual colour and scene) instead of re-drawn ones, and the photometric-only
variant (image:random pairs, photometric intervened validation), as on data without known
factors. Then the other styles as the shifted target; last, the selection time on the demo from
a warm cache. Target labels are only ever used to score.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace

import pandas as pd

from clip_icm import defaults
from clip_icm import evaluation as ev
from clip_icm import toydomains as td
from clip_icm.backend import ModelConfig
from clip_icm.methods import label
from clip_icm.pipeline import DataConfig, InterventionConfig, build_embedding_set
from clip_icm.resources import cache_dir

from bench.toy_demo_results import markdown

TARGET = td.DEMO_RECIPE.target_domain
METHODS = ("icm", "pca", "augmentation")


def world(seed: int, target: str = TARGET):
    if seed == td.DEMO_RECIPE.seed and target == TARGET:
        root = td.ensure_demo_data()
    else:
        root = td.generate_toydomains(cache_dir() / f"toydomains-seed{seed}-{target}", td.DEMO_RECIPE,
                                      seed=seed, target_domain=target)
    cfg = InterventionConfig(text_banks=(), true_swaps=defaults.DEMO_TRUE_SWAPS,
                             intervened_val=("counterfactual", "conflict", "image"), look_prompts=True)
    return build_embedding_set(DataConfig(root=str(root)), ModelConfig(name="toy-clip"), cfg)


def _target(frame: pd.DataFrame, method: str, protocol: str) -> float:
    rows = frame[(frame.method == method) & (frame.protocol == protocol) & (frame.role == "target")]
    return float(rows.accuracy.item())


def rows_for(emb, seed: int, pairs: str, pair_sets: tuple[str, ...], checks: tuple[str, ...],
             target: str = TARGET, rules: tuple[str, ...] = tuple(ev.SCORINGS)) -> list[dict]:
    """One row per rule and protocol: the chosen (K, lam) and the target accuracy of each method."""
    view = replace(emb, intervened_val=[c for c in emb.intervened_val if c.name in checks])
    Ks, lams = defaults.grid(emb.features.shape[1], "relative")
    out = []
    for protocol, prompts in ((ev.LINEAR_PROBE, "classes"), (ev.ZERO_SHOT, "usual_look")):
        config = ev.EvalConfig(lam_mode="relative", methods=METHODS, pair_sets=pair_sets, prompts=prompts)
        for rule in rules:
            frame = ev.select_and_evaluate(view, target, config, rule, Ks, lams, protocol=protocol)
            out.append({"world seed": seed, "target": target, "pairs": pairs, "protocol": protocol, "rule": rule,
                        "K": int(frame.K.iloc[0]), "lam": f"{frame.lam.iloc[0]:g}",
                        "CLIP": _target(frame, ev.FULL_SPACE, protocol),
                        **{label(m): _target(frame, m, protocol) for m in METHODS}})
    return out


def selection_seconds(emb, repeats: int = 3) -> float:
    """Best of ``repeats``, BLAS limited to one thread as the dashboard runs it."""
    from threadpoolctl import threadpool_limits

    config = ev.EvalConfig(lam_mode="relative", methods=("icm",), pair_sets=defaults.DEMO_PAIR_SETS)
    Ks, lams = defaults.grid(emb.features.shape[1], "relative")
    best = float("inf")
    with threadpool_limits(1, user_api="blas"):
        for _ in range(repeats):
            start = time.perf_counter()
            ev.select_hyperparameters(emb, TARGET, "icm", Ks, lams, config, scoring="interventional")
            best = min(best, time.perf_counter() - start)
    return best


def other_targets(seed: int) -> pd.DataFrame:
    """The same recipe with each other style as the shifted, held-out target (interventional rule)."""
    rows = []
    for target in td.STYLES:
        if target != TARGET:
            rows += rows_for(world(seed, target), seed, "true colour + background", defaults.DEMO_PAIR_SETS,
                             ("counterfactual:colour+background",), target, ("interventional",))
    return pd.DataFrame(rows).drop(columns="pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parts", nargs="+", default=["worlds", "targets", "timing"],
                        choices=["worlds", "targets", "timing"],
                        help="worlds: every rule on each seed; targets: the other styles shifted (seed 1); timing")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; toy-clip; target {TARGET}; "
          f"grid K {defaults.grid(128, 'relative')[0]} x relative lam {defaults.grid(128, 'relative')[1]}\n")
    if "worlds" in args.parts:
        worlds_table(args.seeds)
    if "targets" in args.parts:
        print("\nthe other styles as the shifted target (world seed 1, interventional rule)\n")
        print(markdown(other_targets(1)))
    if "timing" in args.parts:
        print(f"\nselection time on the demo, warm cache (20 settings, interventional, BLAS 1 thread, best of 3): "
              f"{selection_seconds(world(td.DEMO_RECIPE.seed)):.2f} s")


def worlds_table(seeds: list[int]) -> None:
    rows = []
    for seed in seeds:
        emb = world(seed)
        rows += rows_for(emb, seed, "true colour + background", defaults.DEMO_PAIR_SETS,
                         ("counterfactual:colour+background",))
        rows += rows_for(emb, seed, "true colour + background, conflict check (another class's usual look)",
                         defaults.DEMO_PAIR_SETS, (f"conflict@{TARGET}",), rules=("interventional",))
        rows += rows_for(emb, seed, "photometric (image:random)", ("image:random",), ("val image:random",))
    table = pd.DataFrame(rows)
    for pairs in table.pairs.unique():
        print(f"\n{pairs}: target accuracy, K and lam chosen on source data only\n")
        print(markdown(table[table.pairs == pairs].drop(columns=["pairs", "target"])))


if __name__ == "__main__":
    main()
