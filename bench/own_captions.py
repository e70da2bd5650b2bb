"""ICM on the demo fitted on a user's caption pairs alone (data/examples/captions.csv: the demo's
colours, scenes and styles rewritten, 40 pairs), next to the template banks' pairs and both, at the
setting fixed in advance (K 32, relative lam 1) for every held-out domain; prompts that name the
target dropped (the default).

    python -m bench.own_captions     (about 3 s on the 2-core machine with the demo cached)
"""
from __future__ import annotations

import warnings
from pathlib import Path

from clip_icm import evaluation as ev
from clip_icm.backend import ModelConfig
from clip_icm.pipeline import DataConfig, InterventionConfig, build_embedding_set
from clip_icm.projection import RankDeficientWarning

CAPTIONS = Path(__file__).resolve().parent.parent / "data" / "examples" / "captions.csv"
FIXED = (32, 1.0)  # bench/toy_demo_results.py's setting declared before any target number was seen
SETS = {"caption pairs file": ("captions:captions",), "styles + contexts banks": ("text:styles", "text:contexts"),
        "both": ("captions:captions", "text:styles", "text:contexts")}


def main() -> None:
    emb = build_embedding_set(DataConfig(), ModelConfig(name="toy-clip"),
                              InterventionConfig(image=(), text_pairs=(str(CAPTIONS),)))
    print(f"ICM K={FIXED[0]}, relative lam {FIXED[1]:g}; linear probe / zero-shot per held-out domain")
    for label, sets in SETS.items():
        config = ev.EvalConfig(FIXED[0], FIXED[1], "relative", ("icm",), sets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RankDeficientWarning)  # 40-168 text pairs for D = 128: expected
            frame = ev.leave_one_domain_out(emb, config=config)
        target = frame[frame.role == "target"].set_index(["target", "method", "protocol"]).accuracy
        cells = [f"{d} {target[d, 'icm', ev.LINEAR_PROBE]:.3f}/{target[d, 'icm', ev.ZERO_SHOT]:.3f}"
                 for d in emb.domain_names]
        print(f"{label:24s} " + "  ".join(cells))
    clip = [f"{d} {target[d, ev.FULL_SPACE, ev.LINEAR_PROBE]:.3f}/{target[d, ev.FULL_SPACE, ev.ZERO_SHOT]:.3f}"
            for d in emb.domain_names]
    print(f"{'CLIP':24s} " + "  ".join(clip))


if __name__ == "__main__":
    main()
