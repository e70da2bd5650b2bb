"""The released steps, transcribed for tests: what the published code does to embeddings.

Written from reading the released files, step for step, in their dtypes and order (not pasted:
the model, the data loaders and the CUDA calls are replaced by arrays in the loaders' order):

- ML-TASA/CLIP-ICM at b9029463 ("fix bug"): ``clip_icm.py`` (``estimate_content``, ``get_A_inv``),
  ``engine.py`` (``get_text_features``, ``zero_shot``, ``logistic``), ``converter_domainbed.py``
  (``get_domainbed_datasets``, its ``holdout`` and ``open_ratio`` splits), ``main.py``
  (``clip_model.float()``: every embedding is fp32) and DomainBed's ``lib/misc.py``
  (``seed_hash``, ``split_dataset``) as vendored there;
- chingyaoc/debias_vl at adccbe6a: ``discriminative/main.py`` (``get_proj_matrix``, ``get_A``,
  ``get_M``, the closed form ``P = P0 (lam M + I)^-1``) and ``discriminative/network/clip.py``
  (``get_embeddings``: fp32, each row divided by its norm).

What the arrays stand for: ``features`` the ``encode_image`` outputs of one domain's images in
ImageFolder order, ``z`` / ``z_intervene`` those of the training loader's (x, T(x)) batches
concatenated, ``text`` the ``encode_text`` outputs of "a photo of a {}." per class. The released
training loader shuffles (``shuffle=True``, never seeded), and ``T`` draws its op with an unseeded
``random.randint``: the rows given here stand for one such draw, so that a comparison with the
project is "the same given the same pairs and order". Nothing here imports the project.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from sklearn.decomposition import TruncatedSVD
from sklearn.linear_model import LogisticRegression

# ---------------------------------------------------------------- DomainBed lib/misc.py


def seed_hash(*args) -> int:
    """misc.seed_hash: md5 of str(args), modulo 2**31."""
    args_str = str(args)
    return int(hashlib.md5(args_str.encode("utf-8")).hexdigest(), 16) % (2**31)


def split_dataset(n_items: int, n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """misc.split_dataset on a dataset of ``n_items``: (keys of the first n, keys of the rest)."""
    assert n <= n_items
    keys = list(range(n_items))
    np.random.RandomState(seed).shuffle(keys)
    return keys[:n], keys[n:]


# ---------------------------------------------------------------- converter_domainbed.py


def domain_shift_splits(env_sizes: list[int], holdout: float = 0.2) -> list[tuple[list[int], list[int]]]:
    """get_domainbed_datasets(open_ratio=0): per environment (index in sorted folder order) its
    (out, in_) keys; train = the sources' in_, test = the target's out."""
    splits = []
    for env_i, size in enumerate(env_sizes):
        out, in_ = split_dataset(size, int(size * holdout), seed_hash(0, env_i))
        splits.append((out, in_))
    return splits


def in_the_wild_classes(class_names: list[str], open_ratio: float = 0.5) -> tuple[list[str], list[str]]:
    """get_domainbed_datasets(open_ratio=0.5): base = the first int((1 - r) n) classes."""
    keys = list(range(len(class_names)))
    base_class_keys = keys[:int((1 - open_ratio) * len(keys))]
    base_class_names = [name for i, name in enumerate(class_names) if i in base_class_keys]
    open_class_names = [name for name in class_names if name not in base_class_names]
    return base_class_names, open_class_names


def prompt_class_name(folder: str) -> str:
    """engine.get_text_features: ``template.format(c.replace("_", " "))``, nothing else."""
    return folder.replace("_", " ")


# ---------------------------------------------------------------- clip_icm.py


def estimate_content(z: np.ndarray, z_intervene: np.ndarray, lamda: float = 1000) -> torch.Tensor:
    """M = z'z/n - lamda delta'delta/n (fp32, as Python evaluates it), its eigenvectors, ascending."""
    original_representation = torch.tensor(np.asarray(z, dtype=np.float32))
    intervene_representation = torch.tensor(np.asarray(z_intervene, dtype=np.float32))
    delta = original_representation - intervene_representation
    n_or_re = original_representation.shape[0]
    n_delta = delta.shape[0]
    M = original_representation.T @ original_representation / n_or_re - lamda * delta.T @ delta / n_delta
    eig_value, eig_vector = torch.linalg.eigh(M)
    return eig_vector


def get_A_inv(z: np.ndarray, z_intervene: np.ndarray, lamda: float, hold_out_dim: int) -> torch.Tensor:
    """The first hold_out_dim columns: the eigenvectors of the smallest eigenvalues."""
    return estimate_content(z, z_intervene, lamda=lamda)[:, :hold_out_dim]


# ---------------------------------------------------------------- engine.py


def get_text_features(text: np.ndarray) -> torch.Tensor:
    """encode_text outputs (fp32), each row divided by its norm in place."""
    text_features = torch.tensor(np.asarray(text, dtype=np.float32))
    text_features /= text_features.norm(dim=-1, keepdim=True)
    return text_features


def zero_shot(features: np.ndarray, text: np.ndarray, A_inv: torch.Tensor) -> np.ndarray:
    """engine.zero_shot's predictions: text normalised then projected; images projected;
    softmax(100 x similarity), argmax. One batch (the loader's batches of 36 are rows of it)."""
    text_features = get_text_features(text)
    text_features = text_features @ A_inv
    image_features = torch.tensor(np.asarray(features, dtype=np.float32)).float()
    image_features = image_features @ A_inv
    similarity = (100.0 * image_features @ text_features.T).softmax(dim=-1)
    predictions = similarity.argmax(dim=-1)
    return predictions.numpy()


def logistic(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
             A_inv: torch.Tensor) -> np.ndarray:
    """engine.logistic's predictions: fp32 features @ A_inv, sklearn's LogisticRegression on them."""
    train = torch.tensor(np.asarray(train_features, dtype=np.float32)) @ A_inv
    test = torch.tensor(np.asarray(test_features, dtype=np.float32)) @ A_inv
    classifier = LogisticRegression(random_state=0, C=0.316, max_iter=1000)
    classifier.fit(train.cpu().numpy(), np.asarray(train_labels))
    return classifier.predict(test.cpu().numpy())


# ---------------------------------------------------------------- debias_vl discriminative/main.py


def get_proj_matrix(embeddings: np.ndarray) -> np.ndarray:
    """P0 = I - B (B'B)^-1 B', B the TruncatedSVD basis of the spurious prompts' rows."""
    tSVD = TruncatedSVD(n_components=len(embeddings))
    tSVD.fit_transform(embeddings)
    basis = tSVD.components_.T
    proj = np.linalg.inv(np.matmul(basis.T, basis))
    proj = np.matmul(basis, proj)
    proj = np.matmul(proj, basis.T)
    return np.eye(proj.shape[0]) - proj


def get_A(z_i: np.ndarray, z_j: np.ndarray) -> np.ndarray:
    z_i, z_j = z_i[:, None], z_j[:, None]
    return np.matmul(z_i, z_i.T) + np.matmul(z_j, z_j.T) - np.matmul(z_i, z_j.T) - np.matmul(z_j, z_i.T)


def get_M(embeddings: np.ndarray, S: list[list[int]]) -> np.ndarray:
    d = embeddings.shape[1]
    M = np.zeros((d, d))
    for s in S:
        M += get_A(embeddings[s[0]], embeddings[s[1]])
    return M / len(S)


def normalised(text: np.ndarray) -> np.ndarray:
    """get_embeddings(normalize=True) on given encode_text outputs."""
    text = torch.tensor(np.asarray(text))
    return (text / text.norm(dim=-1, keepdim=True)).numpy()


def debias_vl(query: np.ndarray, spurious: np.ndarray, candidates: np.ndarray, S: list[list[int]],
              lam: float = 1000) -> tuple[np.ndarray, np.ndarray]:
    """main()'s --debias branch: (P, the calibrated query embeddings before their re-normalisation)."""
    P0 = get_proj_matrix(normalised(spurious))
    M = get_M(normalised(candidates), S)
    G = lam * M + np.eye(M.shape[0])
    P = np.matmul(P0, np.linalg.inv(G))
    return P, np.matmul(normalised(query), P.T)
