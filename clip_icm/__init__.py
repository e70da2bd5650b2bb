"""CLIP-ICM Explorer: the Invariant Causal Mechanism of CLIP, as a library.

The public API, read at a glance below. Submodules are imported on first use (scikit-learn's
lazy ``__getattr__``), so ``import clip_icm`` and ``python -m clip_icm --help`` stay instant:
importing scikit-learn, pandas or torch costs seconds.
"""
from __future__ import annotations

import importlib

# public name -> the submodule that defines it
_API: dict[str, str] = {
    # embeddings
    "EmbeddingSet": "embeddings",
    "PairSet": "embeddings",
    "PromptSet": "embeddings",
    # registry
    "Registry": "registry",
    # projection
    "InvariantProjection": "projection",
    "PCAProjection": "projection",
    "NullSpaceProjection": "projection",
    "OrthCaliProjection": "projection",
    "IdentityProjection": "projection",
    "stack_pairs": "projection",
    # methods: one spec per method
    "METHODS": "methods",
    "MethodSpec": "methods",
    "make_projection": "methods",
    # evaluation
    "EvalConfig": "evaluation",
    "class_split": "evaluation",
    "evaluate_open_class": "evaluation",
    "open_class_leave_one_domain_out": "evaluation",
    "evaluate_split": "evaluation",
    "fit_linear_probe": "evaluation",
    "fit_projection": "evaluation",
    "leave_one_domain_out": "evaluation",
    "select_hyperparameters": "evaluation",
    "select_and_evaluate": "evaluation",
    "source_score": "evaluation",
    "sweep": "evaluation",
    "zero_shot_classifier": "evaluation",
    "zero_shot_predict": "evaluation",
    # evaluation protocols (ours, the released code's)
    "PROTOCOLS": "protocols",
    "Protocol": "protocols",
    # scm
    "LinearSCM": "scm",
    "SCMConfig": "scm",
    "make_embedding_set": "scm",
    "principal_angles": "scm",
    "r2_recovery": "scm",
    "run_playground": "scm",
    "subspace_distance": "scm",
    # datasets
    "DATASETS": "datasets",
    "DatasetInfo": "datasets",
    "DomainScan": "datasets",
    "detect_datasets": "datasets",
    "is_domainbed_folder": "datasets",
    "load_image": "datasets",
    "readable_name": "datasets",
    "scan_domain_folder": "datasets",
    "split_mask": "datasets",
    # a user's own pairs files and tables
    "CaptionPairs": "user_pairs",
    "ImagePairs": "user_pairs",
    "read_caption_pairs": "user_pairs",
    "read_image_pairs": "user_pairs",
    "read_table": "tables",
    # interventions
    "IMAGE_INTERVENTIONS": "interventions",
    "TEXT_BANKS": "interventions",
    "ZERO_SHOT_TEMPLATES": "interventions",
    "ImageIntervention": "interventions",
    "RandomIntervention": "interventions",
    "TextBank": "interventions",
    "cross_modal_texts": "interventions",
    "make_image_intervention": "interventions",
    "make_text_pairs": "interventions",
    # backend
    "MODELS": "backend",
    "ClipBackend": "backend",
    "ModelConfig": "backend",
    "load_model": "backend",
    "model_key": "backend",
    # store
    "EmbeddingStore": "store",
    # pipeline
    "DataConfig": "pipeline",
    "InterventionConfig": "pipeline",
    "EmbeddingRun": "pipeline",
    "build_embedding_set": "pipeline",
    "embed_dataset": "pipeline",
    # reduce
    "layout_2d": "reduce",
    # toydomains
    "Factors": "toydomains",
    "ensure_demo_data": "toydomains",
    "generate_toydomains": "toydomains",
    "ToyDomainsRecipe": "toydomains",
    "render": "toydomains",
    "render_counterfactual": "toydomains",
}
__all__ = list(_API)


def __getattr__(name: str) -> object:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"clip_icm.{_API[name]}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
