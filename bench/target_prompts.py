"""ICM probe on the demo's held-out cartoon domain, fitted on text-bank pairs, with the prompts that
name the target dropped (the default) or kept: how much the target's own style word was worth.

    python -m bench.target_prompts     (about 15 s on the 2-core machine with the demo cached)
"""
from __future__ import annotations

import warnings

from clip_icm import evaluation as ev
from clip_icm import toydomains as td
from clip_icm.backend import ModelConfig
from clip_icm.pipeline import DataConfig, InterventionConfig, build_embedding_set
from clip_icm.projection import RankDeficientWarning

FIXED = (32, 1.0)  # bench/toy_demo_results.py's setting declared before any target number was seen
BANKS = {"styles + contexts": ("text:styles", "text:contexts"), "toydomains": ("text:toydomains",)}


def main() -> None:
    emb = build_embedding_set(DataConfig(), ModelConfig(name="toy-clip"),
                              InterventionConfig(image=(), text_banks=(td.text_bank(), "styles", "contexts")))
    target = td.DEMO_RECIPE.target_domain
    print(f"target {target}; ICM K={FIXED[0]}, relative lam {FIXED[1]:g}; linear probe / zero-shot")
    for label, sets in BANKS.items():
        for keep in (False, True):
            config = ev.EvalConfig(FIXED[0], FIXED[1], "relative", ("icm",), sets, keep_target_styles=keep)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RankDeficientWarning)  # 64 text pairs for D = 128: expected
                frame = ev.evaluate_split(emb, target, config)
            acc = frame[frame.role == "target"].set_index(["method", "protocol"]).accuracy
            print(f"{label:18s} prompts naming {target} {'kept   ' if keep else 'dropped'}: "
                  f"{acc['icm', ev.LINEAR_PROBE]:.3f} / {acc['icm', ev.ZERO_SHOT]:.3f}  "
                  f"(CLIP {acc[ev.FULL_SPACE, ev.LINEAR_PROBE]:.3f} / {acc[ev.FULL_SPACE, ev.ZERO_SHOT]:.3f})")


if __name__ == "__main__":
    main()
