"""The demo's story on worlds it was not tuned on: on three seeded ToyDomains worlds (not the
bundled one), K and lam chosen by the interventional rule on source data only give an ICM probe
that beats the full-space probe on the shifted target, with PCA (the control) and augmentation
scored beside it. Small worlds (8 classes x 4 domains x 16) and the shipped toy-clip.
"""
from __future__ import annotations

import pytest

from clip_icm import defaults
from clip_icm import toydomains as td

SEEDS = (1, 2, 3)
TARGET = td.DEMO_RECIPE.target_domain


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    from clip_icm.backend import ModelConfig
    from clip_icm.pipeline import DataConfig, InterventionConfig, build_embedding_set
    from clip_icm.store import EmbeddingStore

    tmp = tmp_path_factory.mktemp("worlds")
    store = EmbeddingStore(tmp / "cache")
    out = {}
    for seed in SEEDS:
        root = td.generate_toydomains(tmp / f"toy{seed}", n_per_class_per_domain=16, seed=seed)
        out[seed] = build_embedding_set(
            DataConfig(root=str(root)), ModelConfig(name="toy-clip", device="cpu"),
            InterventionConfig(image=(), text_banks=(), true_swaps=defaults.DEMO_TRUE_SWAPS, look_prompts=True),
            store=store,
        )
    return out


def _target(frame, method, protocol):
    rows = frame[(frame.method == method) & (frame.protocol == protocol) & (frame.role == "target")]
    return float(rows.accuracy.item())


@pytest.mark.parametrize("seed", SEEDS)
def test_the_rule_beats_the_full_space_probe_on_every_world(worlds, seed):
    from clip_icm.evaluation import FULL_SPACE, LINEAR_PROBE, EvalConfig, select_and_evaluate

    emb = worlds[seed]
    assert [c.name for c in emb.intervened_val] == ["counterfactual:colour+background"]
    config = EvalConfig(lam_mode="relative", methods=("icm", *defaults.DEMO_BASELINES),
                        pair_sets=defaults.DEMO_PAIR_SETS)
    Ks, lams = defaults.grid(emb.features.shape[1], "relative")
    assert min(Ks) >= defaults.SMALLEST_K
    frame = select_and_evaluate(emb, TARGET, config, "interventional", Ks, lams)
    icm, clip = _target(frame, "icm", LINEAR_PROBE), _target(frame, FULL_SPACE, LINEAR_PROBE)
    assert icm - clip > 0.05, (seed, icm, clip)
    assert icm > _target(frame, "pca", LINEAR_PROBE)  # not mere dimension reduction


def test_usual_look_prompts_trap_clip_zero_shot_and_icm_escapes(worlds):
    """Prompts naming each class with its usual source colour and scene: CLIP's zero-shot follows
    the reversed shortcut on the target; ICM, chosen by the zero-shot form of the rule, does not."""
    from clip_icm.evaluation import FULL_SPACE, ZERO_SHOT, EvalConfig, select_and_evaluate

    emb = worlds[SEEDS[0]]
    assert emb.look_prompts[TARGET].shape[:2] == (3, len(emb.class_names))  # 3 source styles x classes
    config = EvalConfig(lam_mode="relative", methods=("icm",), pair_sets=defaults.DEMO_PAIR_SETS, prompts="usual_look")
    frame = select_and_evaluate(emb, TARGET, config, "interventional", *defaults.grid(128, "relative"),
                                protocol=ZERO_SHOT)
    clip, icm = _target(frame, FULL_SPACE, ZERO_SHOT), _target(frame, "icm", ZERO_SHOT)
    assert clip < 0.5 and icm - clip > 0.3, (clip, icm)
