"""What each remaining difference from the released code changes, on the seeded arrays of
tests/test_released_reference.py (3 domains x 200 rows, D = 64, 6 classes; 3 seeds x 3 targets x
(K, lam) in (8, 1000), (32, 1000), (16, 1): 27 settings of 600 rows each).

Each line compares the released steps (tests/released_reference.py) with one step done otherwise:
float64 features for the probe, the plain dot-product argmax instead of softmax(100 * dot), a
float64 eigendecomposition, the probe's rows in another order (the released loader shuffles,
unseeded), the zero-shot forward in the loader's batches of 36, every embedding rounded to
float16 first (the project's embedding store keeps float16). Counts are of rows whose predicted
class differs. ``python -m bench.released_fidelity``
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from clip_icm import protocols
from clip_icm.projection import InvariantProjection
from tests import released_reference as released
from tests.test_released_reference import DOMAINS, SETTINGS, seeded_arrays


def _probe(train_X, train_y, X) -> np.ndarray:
    return LogisticRegression(random_state=0, C=0.316, max_iter=1000).fit(train_X, train_y).predict(X)


def main() -> None:
    counts = {name: [] for name in ("float64 probe features", "dot instead of softmax", "float64 eigh: zero-shot",
                                    "float64 eigh: probe", "shuffled probe rows", "zero-shot in batches of 36",
                                    "float16-stored embeddings: zero-shot", "float16-stored embeddings: probe")}
    a_inv_gap = []
    for seed in range(3):
        emb = seeded_arrays(seed)
        for target in DOMAINS:
            train = protocols.released_train_rows(emb.domains, None, target)
            pairs = emb.pair_set("image:random").excluding(target)
            for K, lam in SETTINGS:
                A = released.get_A_inv(pairs.z, pairs.z_do, lam, K)
                zero_shot = released.zero_shot(emb.features, emb.text_features[0], A)
                probe = released.logistic(emb.features[train], emb.labels[train], emb.features, A)
                X32 = (torch.tensor(emb.features) @ A).numpy()
                X64 = emb.features.astype(np.float64) @ A.numpy().astype(np.float64)
                counts["float64 probe features"].append((_probe(X64[train], emb.labels[train], X64) != probe).sum())
                text = (released.get_text_features(emb.text_features[0]) @ A).numpy()
                counts["dot instead of softmax"].append((np.argmax(X32 @ text.T, axis=1) != zero_shot).sum())
                f64 = InvariantProjection(K, lam, "as_released").fit(pairs.z, pairs.z_do).components_
                signs = np.sign(np.sum(f64 * A.numpy().T, axis=1))
                a_inv_gap.append(np.abs(f64 - signs[:, None] * A.numpy().T).max())
                text64 = emb.text_features[0] / np.linalg.norm(emb.text_features[0], axis=1, keepdims=True)
                Y64 = emb.features.astype(np.float64) @ f64.T
                counts["float64 eigh: zero-shot"].append((np.argmax(Y64 @ (text64 @ f64.T).T, axis=1)
                                                          != zero_shot).sum())
                counts["float64 eigh: probe"].append((_probe(Y64[train], emb.labels[train], Y64) != probe).sum())
                order = np.random.default_rng(seed * 100 + K).permutation(train)
                counts["shuffled probe rows"].append((_probe(X32[order], emb.labels[order], X32) != probe).sum())
                batched = np.concatenate([released.zero_shot(emb.features[i:i + 36], emb.text_features[0], A)
                                          for i in range(0, len(emb.features), 36)])
                counts["zero-shot in batches of 36"].append((batched != zero_shot).sum())
                # the project's store rounds every embedding to float16 (features, pairs and text)
                half = lambda X: np.asarray(X, dtype=np.float16).astype(np.float32)  # noqa: E731
                A16 = released.get_A_inv(half(pairs.z), half(pairs.z_do), lam, K)
                counts["float16-stored embeddings: zero-shot"].append(
                    (released.zero_shot(half(emb.features), half(emb.text_features[0]), A16) != zero_shot).sum())
                counts["float16-stored embeddings: probe"].append(
                    (released.logistic(half(emb.features[train]), emb.labels[train], half(emb.features), A16)
                     != probe).sum())
    print("| step done otherwise | settings with a difference (of 27) | rows that differ (of 27 x 600) | most in one setting |")
    print("|---|---|---|---|")
    for name, values in counts.items():
        values = np.array(values)
        print(f"| {name} | {(values > 0).sum()} | {values.sum()} | {values.max()} |")
    print(f"\nfloat64 eigh vs the released fp32 eigh, largest |A_inv| entry difference: "
          f"{min(a_inv_gap):.1e} to {max(a_inv_gap):.1e}")


if __name__ == "__main__":
    main()
