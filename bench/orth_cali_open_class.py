"""Orth-Cali on the bundled demo, one construction step at a time: the open-class harmonic mean
(mean over the four held-out domains) and the domain-shift zero-shot target accuracy, with what
P0 removes. The demo as ``python -m clip_icm evaluate`` embeds it (toy-clip, its default pair sets,
K and lam). ``python -m bench.orth_cali_open_class``
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from clip_icm import cli
from clip_icm.evaluation import evaluate_split, open_class_leave_one_domain_out, orth_cali_diagnostics, fit_projection
from clip_icm.pipeline import build_embedding_set


def demo_embeddings():
    args = cli.build_parser().parse_args(["evaluate"])
    cli._protocol_args(args)
    emb = build_embedding_set(*cli._configs(args))
    return emb, cli._eval_config(args, emb.features.shape[1], ("orth_cali",))


def scores(emb, config, method="orth_cali") -> tuple[float, float, float, float]:
    """(open-class harmonic mean, domain-shift zero-shot target accuracy, directions removed, span)."""
    config = replace(config, methods=(method,))
    open_class = open_class_leave_one_domain_out(emb, config=config)
    hm = open_class[(open_class.role == "target") & (open_class.method == method)
                    & (open_class.classes == "harmonic mean")].accuracy.mean()
    shift = [evaluate_split(emb, t, config) for t in emb.domain_names]
    zs = np.mean([f[(f.role == "target") & (f.method == method) & (f.protocol == "zero-shot")].accuracy.item()
                  for f in shift])
    diagnostics = [orth_cali_diagnostics(emb, fit_projection(emb, t, method, config), config) for t in emb.domain_names]
    return (hm, zs, np.mean([d["spurious_removed"] for d in diagnostics]),
            np.mean([d["spurious_span"] for d in diagnostics]))


def main() -> None:
    emb, config = demo_embeddings()
    variant_only = emb.spurious.subset(emb.spurious.variant_words != "")  # without "a photo of a thing."
    before = replace(emb, attribute_prompts=None, spurious=variant_only)  # anchor-variant pairs, as before
    steps = [
        ("before: anchor-vs-variant pairs, variant values only, 8-template queries",
         before, replace(config, orth_cali_queries="ensemble"), "orth_cali"),
        ("+ debias_vl's pairs (every same-class pair of variants)",
         replace(emb, spurious=variant_only), replace(config, orth_cali_queries="ensemble"), "orth_cali"),
        ("+ every attribute value among the spurious prompts",
         emb, replace(config, orth_cali_queries="ensemble"), "orth_cali"),
        ("+ one query prompt per class (the default now)", emb, config, "orth_cali"),
        ("M alone (no spurious prompts)", replace(emb, spurious=None), config, "orth_cali"),
        ("class-free directions (orth_cali_class_free)", emb, config, "orth_cali_class_free"),
    ]
    print("| Orth-Cali built as | open-class HM | domain-shift zero-shot (target) | P0 removes | span of class prompts |")
    print("|---|---|---|---|---|")
    for name, e, c, method in steps:
        hm, zs, removed, span = scores(e, c, method)
        print(f"| {name} | {hm:.3f} | {zs:.3f} | {removed:.0f} of {e.features.shape[1]} | {span:.0%} |")
    released = replace(config, protocol="released", methods=("icm_as_released", "orth_cali"), lam=1000.0,
                       lam_mode="absolute", pair_sets=None)
    frame = open_class_leave_one_domain_out(emb, config=released)
    hm = frame[(frame.role == "target") & (frame.classes == "harmonic mean")].groupby("method").accuracy.mean()
    print("\nreleased preset, open class (first half of the classes as base): "
          + ", ".join(f"{m} {v:.3f}" for m, v in hm.items()))


if __name__ == "__main__":
    main()
