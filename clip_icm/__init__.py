"""CLIP-ICM Explorer: the Invariant Causal Mechanism of CLIP, as a library."""
from clip_icm.backend import MODELS, ClipBackend, ModelConfig, load_model, model_key
from clip_icm.datasets import (
    DATASETS,
    DatasetInfo,
    DomainScan,
    detect_datasets,
    is_domainbed_folder,
    load_image,
    readable_name,
    scan_domain_folder,
    split_mask,
)
from clip_icm.embeddings import EmbeddingSet, PairSet
from clip_icm.evaluation import (
    EvalConfig,
    evaluate_split,
    fit_linear_probe,
    fit_projection,
    leave_one_domain_out,
    select_hyperparameters,
    sweep,
    zero_shot_classifier,
    zero_shot_predict,
)
from clip_icm.interventions import (
    IMAGE_INTERVENTIONS,
    TEXT_BANKS,
    ZERO_SHOT_TEMPLATES,
    ImageIntervention,
    RandomIntervention,
    TextBank,
    cross_modal_texts,
    make_image_intervention,
    make_text_pairs,
)
from clip_icm.projection import (
    METHOD_LABELS,
    METHODS,
    InvariantProjection,
    NullSpaceProjection,
    OrthCaliProjection,
    PCAProjection,
    make_projection,
    stack_pairs,
)
from clip_icm.pipeline import DataConfig, EmbeddingRun, InterventionConfig, build_embedding_set, embed_dataset
from clip_icm.reduce import layout_2d
from clip_icm.registry import Registry
from clip_icm.scm import (
    LinearSCM,
    SCMConfig,
    make_embedding_set,
    principal_angles,
    r2_recovery,
    run_playground,
    subspace_distance,
)
from clip_icm.store import EmbeddingStore
from clip_icm.toydomains import (
    Factors,
    ToyDomainsRecipe,
    ensure_demo_data,
    generate_toydomains,
    render,
    render_counterfactual,
)

__all__ = [
    "EmbeddingSet",
    "PairSet",
    "Registry",
    # projection
    "InvariantProjection",
    "PCAProjection",
    "NullSpaceProjection",
    "OrthCaliProjection",
    "METHODS",
    "METHOD_LABELS",
    "make_projection",
    "stack_pairs",
    # evaluation
    "EvalConfig",
    "evaluate_split",
    "fit_linear_probe",
    "fit_projection",
    "leave_one_domain_out",
    "select_hyperparameters",
    "sweep",
    "zero_shot_classifier",
    "zero_shot_predict",
    # causal playground
    "LinearSCM",
    "SCMConfig",
    "make_embedding_set",
    "principal_angles",
    "r2_recovery",
    "run_playground",
    "subspace_distance",
    # datasets
    "DATASETS",
    "DatasetInfo",
    "DomainScan",
    "detect_datasets",
    "is_domainbed_folder",
    "load_image",
    "readable_name",
    "scan_domain_folder",
    "split_mask",
    # interventions
    "IMAGE_INTERVENTIONS",
    "TEXT_BANKS",
    "ZERO_SHOT_TEMPLATES",
    "ImageIntervention",
    "RandomIntervention",
    "TextBank",
    "cross_modal_texts",
    "make_image_intervention",
    "make_text_pairs",
    # backend, store, pipeline
    "MODELS",
    "ClipBackend",
    "ModelConfig",
    "load_model",
    "model_key",
    "EmbeddingStore",
    "DataConfig",
    "InterventionConfig",
    "EmbeddingRun",
    "build_embedding_set",
    "embed_dataset",
    # 2-D layouts (the dashboard's service layer is clip_icm.service)
    "layout_2d",
    # the bundled ToyDomains world (toy-clip's training script: python -m clip_icm.toyclip)
    "Factors",
    "ensure_demo_data",
    "generate_toydomains",
    "ToyDomainsRecipe",
    "render",
    "render_counterfactual",
]
