"""The thin service layer the dashboard calls: pipeline + evaluation + reduce + figures.

Everything here is plain Python on plain values (no Streamlit), so the dashboard stays a
shell of widgets and caches, and every step can be tested without a browser. Errors a user
can cause (a missing folder, weights not on disk, an empty domain) come out as
:class:`ServiceError` with a message meant to be shown as is.

One module per reason to change: ``requests`` (what to embed, the embeddings, the model and
data choices), ``fitting`` (fits, accuracy, selection, sweeps, confusions, the playground),
``maps`` (points, layouts, neighbours, thumbnails), ``layout_worker`` (the thread that computes the
layouts off the page), ``gate`` (the cap on heavy jobs run at once by a server's sessions) and
``exports`` (downloads); ``base`` holds
the error type they share. The dashboard reads them all through this package.
"""
from clip_icm.service.base import USER_ERRORS, Progress, ServiceError, content_key, keeps, message
from clip_icm.service.exports import (TABLE_FORMATS, accuracy_csv, embedding_table, figure_png, figure_svg,
                                      png_available,
                                      projection_npz, table_bytes)
from clip_icm.service.fitting import (Fit, accuracy_table, accuracy_wide, choose_hyperparameters, confusion,
                                      eval_config, evaluate, evaluate_ahead, evaluate_and_choose, evaluated,
                                      evaluation_process,
                                      evaluate_and_choose_every_target, evaluate_open_class, fit,
                                      full_space_score, method_label, open_class_wide, orth_cali_summary,
                                      playground, projection_defaults, sweep, target_confusions,
                                      with_unused_fixed)
from clip_icm.service.gate import Gate, heavy_jobs
from clip_icm.service.layout_worker import NOW, SPECULATIVE, Job as LayoutJob, LayoutWorker
from clip_icm.service.layout_worker import ready as layout_ready, shared as layout_worker, shared_ahead as ahead_worker
from clip_icm.service.layout_worker import shared_choices as choice_worker
from clip_icm.service.maps import (DRAW_LIMIT, MAP_POINTS, full_layout, full_layout_job, invariant_layout, invariant_layout_job,
                                   example_rows, nearest_neighbours, neighbour_agreement, plot_ids, point_table, predictions,
                                   ready_full_layout_job, sample_note, sample_rows, thumbnail)
from clip_icm.service.requests import (DATA_ROOTS_VAR, SOURCES, SYNTHETIC_DOMAINS, EmbeddingRequest, InterventionChoice, PairExample,
                                       PairsPreview, data_roots, default_target, describe, detect_folder,
                                       examples_of_pairs,
                                       device_and_precision, folder_path, has_true_factors, intervention_config,
                                       load_embeddings, open_clip_architectures, open_clip_tags, pair_examples,
                                       pairs_preview, restrict_domains, text_banks, too_broad, true_factor,
                                       true_factor_in, upload_data, upload_pairs)

__all__ = [
    "USER_ERRORS", "Progress", "ServiceError", "content_key", "keeps", "message",
    "TABLE_FORMATS", "accuracy_csv", "embedding_table", "figure_png", "figure_svg", "png_available", "projection_npz",
    "table_bytes",
    "Fit", "accuracy_table", "accuracy_wide", "choose_hyperparameters", "confusion", "eval_config", "evaluate",
    "evaluate_ahead", "evaluated", "evaluation_process",
    "evaluate_and_choose", "evaluate_and_choose_every_target", "evaluate_open_class", "fit", "full_space_score",
    "method_label", "open_class_wide",
    "orth_cali_summary", "playground",
    "projection_defaults", "sweep", "target_confusions", "with_unused_fixed",
    "Gate", "heavy_jobs",
    "NOW", "SPECULATIVE", "LayoutJob", "LayoutWorker", "ahead_worker", "choice_worker", "layout_ready", "layout_worker",
    "DRAW_LIMIT", "MAP_POINTS", "full_layout", "full_layout_job", "invariant_layout", "invariant_layout_job", "nearest_neighbours",
    "example_rows", "neighbour_agreement", "plot_ids", "point_table", "predictions", "ready_full_layout_job", "sample_note",
    "sample_rows", "thumbnail",
    "DATA_ROOTS_VAR", "SOURCES", "SYNTHETIC_DOMAINS", "EmbeddingRequest", "InterventionChoice", "PairExample", "PairsPreview",
    "pairs_preview", "upload_data", "upload_pairs", "data_roots",
    "default_target", "describe", "detect_folder", "device_and_precision", "examples_of_pairs", "folder_path",
    "has_true_factors",
    "intervention_config", "load_embeddings", "open_clip_architectures", "open_clip_tags", "pair_examples",
    "restrict_domains", "text_banks", "too_broad", "true_factor", "true_factor_in",
]
