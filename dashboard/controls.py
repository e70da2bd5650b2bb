"""Widget groups: each ``*_ui()`` draws its widgets and returns plain values.

Widget keys start with ``ctl_`` so that app.py can keep their values while the user
visits a page that does not draw them (Streamlit drops the state of unseen widgets). The
upload buttons' keys (``upload_*``) do not: a file uploader's value cannot be stored back, and
what it uploaded lives on as the path it wrote into its ``ctl_`` field.
Defaults live in session state (:func:`_default`), never in the widget call, so a
kept value and a default never fight.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import streamlit as st

from clip_icm import defaults, evaluation, methods, service
from clip_icm.embeddings import EmbeddingSet
from clip_icm.errors import InvalidInput
from clip_icm.user_pairs import OWN_PREFIXES
from dashboard import cached
from dashboard.texts import plain

LAMS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 100000.0)


def _default(key: str, value: object) -> str:
    if key not in st.session_state:
        st.session_state[key] = value
    return key


def _valid(key: str, options: list, fallback: object) -> str:
    """Reset a kept value that is no longer an option (e.g. another data set's domain)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = fallback
    return key


# ---------------------------------------------------------------- data, model, interventions

def data_ui() -> dict | None:
    """Data source, folder and per-domain cap. Returns a dict of EmbeddingRequest fields, or
    None when the folder cannot be used (the reason is shown; nothing must be scanned)."""
    # ?source=synthetic (dashboard/url.py) opens without images or model; an unknown name, on the demo
    source = st.radio("Data", list(service.SOURCES), format_func=service.SOURCES.get,
                      key=_valid("ctl_source", list(service.SOURCES), "demo"))
    out: dict = {"source": source}
    if source == "folder":
        folder = _folder_ui()
        if folder is None:
            return None
        out.update(folder)
    if source == "synthetic":
        out["n_per_domain"] = st.slider("Points per domain", 50, 500, step=50, key=_default("ctl_n_synth", 150))
    if source != "synthetic":
        cap = st.number_input("Max images per domain (0 = all)", 0, 100_000, step=50, key=_default("ctl_cap", 0),
                              help="A cap makes a first look at a big data set quick.")
        out["max_per_domain"] = int(cap) or None
    return out


def _folder_ui() -> dict | None:
    st.file_uploader("…or upload a .zip of the data set, or a manifest", type=["zip", "csv", "parquet", "jsonl"],
                     key="upload_data", on_change=_take_upload, args=("upload_data", service.upload_data, "ctl_root"),
                     help="A zip of a DomainBed tree, or of images with a manifest; unpacked into the cache "
                          "folder (no path may leave it, no links, capped size and file count)")
    _said_upload("ctl_root")
    root = st.text_input("DomainBed root folder, or a manifest file", key=_default("ctl_root", ""),
                         help="root/<dataset>/<domain>/<class>/*.jpg, or a folder that is one data set; or a table "
                              "(.csv, .parquet, .jsonl) with the columns path, label, domain, paths relative to it")
    if not root:
        return {"root": ""}
    try:
        found = service.detect_folder(root, service.data_roots(exposed=_served_beyond_this_machine()))
    except service.ServiceError as e:
        st.error(plain(str(e)))  # it quotes the typed text: shown as typed, never as Markdown
        return None
    this = "(this manifest)" if found.get("manifest") else "(this folder)"
    options = list(found["datasets"]) + ([this] if found["is_dataset"] else [])
    if not options:
        st.error("No PACS/VLCS/OfficeHome/TerraIncognita/DomainNet folder found there, and the folder itself "
                 f"cannot be used: {plain(found['problem'])}")
        return None
    dataset = st.selectbox("Data set", options, key=_valid("ctl_dataset", options, options[0]))
    return {"root": found["path"], "dataset": None if dataset == this else dataset}


def _take_upload(key: str, keep, field: str) -> None:
    """Keep a newly uploaded file (``keep``: a service.upload_* function) and put its path in the text
    field ``field`` (replacing a data path, adding a line to a list of files). Runs before the rerun,
    so the field shows the path; an upload once taken is not taken again on the next reruns."""
    files = st.session_state.get(key)
    files = files if isinstance(files, list) else [files] if files is not None else []
    paths, errors = [], []
    for file in files:
        try:
            paths.append(keep(file.getvalue(), file.name))
        except service.ServiceError as e:
            errors.append(str(e))
    st.session_state[f"{field}_upload_errors"] = errors
    if not paths:
        return
    if field == "ctl_root":
        st.session_state[field] = paths[0]
    else:
        kept = [line for line in st.session_state.get(field, "").splitlines() if line.strip()]
        st.session_state[field] = "\n".join(dict.fromkeys(kept + paths))


def _said_upload(field: str) -> None:
    for error in st.session_state.get(f"{field}_upload_errors", []):
        st.error(plain(error))


def _served_beyond_this_machine() -> bool:
    """Whether the server listens on more than loopback (.streamlit/config.toml binds 127.0.0.1;
    serving on a network is the operator's explicit --server.address choice)."""
    return st.get_option("server.address") not in ("127.0.0.1", "localhost", "::1")


def model_ui() -> dict:
    """Model: toy-clip, an open_clip architecture + tag, or a local checkpoint; device, precision."""
    kinds = {"toy": "toy-clip (bundled)", "open_clip": "open_clip architecture", "local": "Local checkpoint"}
    kind = st.radio("Model", list(kinds), format_func=kinds.get, key=_default("ctl_model_kind", "toy"))
    out: dict = {"model": "toy-clip", "pretrained": None}
    if kind == "open_clip":
        archs = _safe_list(cached.open_clip_architectures)
        if archs:
            arch = st.selectbox("Architecture", archs, key=_valid("ctl_arch", archs, "ViT-B-16-quickgelu"
                                                                   if "ViT-B-16-quickgelu" in archs else archs[0]))
            tags = _safe_list(cached.open_clip_tags, arch) + ["none"]
            tag = st.selectbox("Pretrained tag", tags, key=_valid("ctl_tag", tags, tags[0]),
                               help="'none' = random weights (tests the pipeline without downloads)")
            out = {"model": arch, "pretrained": tag}
    elif kind == "local":
        out["model"] = st.text_input("Architecture or local-dir:/folder", key=_default("ctl_local_arch", "ViT-B-32"))
        out["pretrained"] = st.text_input("Checkpoint file (.pt / .bin / .safetensors)",
                                          key=_default("ctl_ckpt", "")) or None
    c1, c2 = st.columns(2)
    out["device"] = c1.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key=_default("ctl_device", "auto"))
    out["precision"] = c2.selectbox("Precision", ["auto", "fp32", "bf16", "fp16"],
                                    key=_default("ctl_precision", "auto"))
    try:
        device, precision = service.device_and_precision(out["device"], out["precision"])
        st.caption(f"Runs on **{device}** in **{precision}**.")
    except (ValueError, RuntimeError) as e:
        st.error(str(e))
    return out


def _safe_list(fn, *args) -> list[str]:
    try:
        return fn(*args)
    except (ImportError, KeyError, RuntimeError) as e:
        st.error(f"open_clip is not usable here: {e}")
        return []


def interventions_ui(bundled_world: bool) -> service.InterventionChoice:
    """Image operations with strengths, editable text banks, true swaps, number of pairs."""
    from clip_icm.interventions import IMAGE_INTERVENTIONS

    picked = st.multiselect("Image interventions (one drawn at random per pair)", IMAGE_INTERVENTIONS.available(),
                            key=_default("ctl_ops", list(defaults.IMAGE_OPS)))
    # The random intervention draws an op by index: the paper's order whatever the clicking order,
    # so that the same ops are the same pairs as the CLI's.
    ops = [op for op in defaults.IMAGE_OPS if op in picked] + sorted(set(picked) - set(defaults.IMAGE_OPS))
    strengths = _strengths_ui(ops, IMAGE_INTERVENTIONS)
    known = service.text_banks(bundled_world)
    banks = st.multiselect("Text template banks", list(known),
                           key=_valid_multi("ctl_banks", list(known), list(defaults.TEXT_BANKS)))
    edited = _banks_ui(banks, known)
    swaps: tuple = ()
    if bundled_world:
        from clip_icm.toydomains import CHANGEABLE

        # Default: the factors the demo's recipe makes spurious (known about the world, not tuned).
        swaps = tuple(st.multiselect("True swaps (re-render the same object)", list(CHANGEABLE),
                                     key=_default("ctl_swaps", list(defaults.true_swaps(True)))))
    cross = st.checkbox("Cross-modal pairs (image vs varied caption)", key=_default("ctl_cross", False),
                        help="Their differences also carry CLIP's image/text modality gap.")
    n_pairs = st.number_input("Image pairs per set (0 = one per training image)", 0, 1_000_000, step=64,
                              key=_default("ctl_n_pairs", defaults.N_PAIRS or 0),
                              help="Each pair set embeds this many edited images.")
    captions, images = _own_pairs_ui()
    kinds = ["counterfactual", "conflict"] if bundled_world else ["image"] if ops else []
    kinds += ["pairs"] if images else []
    checks = st.multiselect("Intervened validation rows (scored by the interventional rule, never fitted)", kinds,
                            key=_valid_multi("ctl_checks", kinds, list(dict.fromkeys(kinds[:1] + kinds[-1:] if images
                                                                                     else kinds[:1]))),
                            help="counterfactual: colour and scene re-drawn; conflict: set to another class's usual "
                                 "colour and scene (read from source training rows); image: the image interventions "
                                 "above, applied to the validation rows (the generic, weaker check); pairs: your "
                                 "image pairs whose first image is a validation row")
    return service.InterventionChoice(tuple(ops), strengths, edited, swaps, bool(cross), int(n_pairs),
                                      look_prompts=defaults.look_prompts(bundled_world), intervened_val=tuple(checks),
                                      text_pairs=captions, image_pairs=images)


def _own_pairs_ui() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Paths of the user's caption pairs and image pairs files, each previewed; a file that cannot
    be used is an error and left out (so the page still shows the rest)."""
    with st.expander("Your own pairs (files)"):
        st.caption("Caption pairs: CSV or JSONL with caption, caption_do (and class). Image pairs: CSV, JSONL or "
                   "Parquet with path, path_do, relative to the data set's folder. One file per line.")
        out = []
        for kind, label in (("captions", "Caption pairs files"), ("images", "Image pairs files")):
            st.file_uploader(f"Upload {label.lower()}", type=["csv", "jsonl", "parquet"], accept_multiple_files=True,
                             key=f"upload_{kind}", on_change=_take_upload,
                             args=(f"upload_{kind}", service.upload_pairs, f"ctl_own_{kind}"))
            _said_upload(f"ctl_own_{kind}")
            text = st.text_area(label, key=_default(f"ctl_own_{kind}", ""), height=68)
            out.append(tuple(p for p in (_pairs_file_ui(line.strip(), kind) for line in text.splitlines()
                                         if line.strip()) if p))
    return out[0], out[1]


def _pairs_file_ui(path: str, kind: str) -> str | None:
    roots = service.data_roots(exposed=_served_beyond_this_machine())
    try:
        preview = service.pairs_preview(path, kind, roots)
    except service.ServiceError as e:
        st.error(plain(str(e)))
        return None
    skipped = f", {len(preview.skipped)} rows skipped (e.g. {preview.skipped[0][1]})" if preview.skipped else ""
    st.caption(plain(f"{preview.name}: {preview.rows} pairs{skipped}"))
    for before, after, words in preview.examples:
        st.markdown(f"{plain(before)} → {_highlighted(after, words)}")
    for note in preview.notes[:3]:
        st.warning(plain(note))
    return preview.path


def _highlighted(text: str, words: str) -> str:
    """``text`` for Markdown with the words of ``words`` (the pair's variant words) in bold."""
    from clip_icm.interventions import words_of

    changed = set(words.split())
    return " ".join(f"**{plain(w)}**" if changed & set(words_of(w)) else plain(w) for w in text.split())


def _strengths_ui(ops: list[str], registry) -> tuple:
    """Number inputs for each selected op's parameters (ranges as sliders)."""
    out = []
    with st.expander("Strengths"):
        for op in ops:
            params = []
            for f in dataclasses.fields(registry.get(op)):
                params.append((f.name, _param_widget(op, f.name, f.default)))
            if params:
                out.append((op, tuple(params)))
            else:
                st.caption(f"{op}: no parameters")
    return tuple(out)


def _param_widget(op: str, name: str, default: object) -> object:
    key = _default(f"ctl_p_{op}_{name}", default)
    label = f"{op}: {name}"
    if isinstance(default, tuple):
        hi = max(2 * default[1], 1)
        return tuple(st.slider(label, type(hi)(0), hi, key=key))
    return st.number_input(label, key=key, step=0.05 if isinstance(default, float) else 1)


def _banks_ui(banks: list[str], known: dict) -> tuple:
    out = []
    for name in banks:
        bank = known[name]
        text = st.text_area(f"Bank '{name}' (one template per line, '{{}}' = class)",
                            key=_default(f"ctl_bank_{name}", "\n".join(bank.variants)), height=120)
        out.append((name, tuple(line.strip() for line in text.splitlines() if line.strip())))
    return tuple(out)


# ---------------------------------------------------------------- domains and projection

SELECTIONS = {**evaluation.SCORING_LABELS, "off": "off: K and λ from the sliders"}


@dataclass(frozen=True)
class ProjectionChoice:
    target: str
    sources: tuple[str, ...]
    method: str
    baselines: tuple[str, ...]
    lam_mode: str
    selection: str  # a key of evaluation.SCORINGS, or "off"
    protocol: str  # what the selection rule scores: evaluation.LINEAR_PROBE or ZERO_SHOT
    prompts: str  # a key of evaluation.PROMPT_SETS
    pair_sets: tuple[str, ...]
    eval_protocol: str = "ours"  # a name in clip_icm.protocols.PROTOCOLS (ours / released)
    task: str = "domain_shift"
    keep_target_styles: bool = False
    choice_mode: str = defaults.CHOICE  # what the model choice reads: a name in defaults.CHOICE_MODES


def domains_ui(emb: EmbeddingSet, default_target: str, target_box=None) -> tuple[str, tuple[str, ...]]:
    """The held-out target domain (drawn in ``target_box``, e.g. the sidebar's first settings) and the
    source domains (all others by default)."""
    names = emb.domain_names
    _forget_other_data_sets_domains(emb)
    target = (target_box or st).selectbox("Target domain (held out)", names,
                          key=_valid("ctl_target", names, default_target if default_target in names else names[-1]))
    others = [d for d in names if d != target]
    _old_target_back_to_the_sources(target, others)
    sources = st.multiselect("Source domains", others, key=_valid_multi("ctl_sources", others))
    return target, tuple(sources)


def _old_target_back_to_the_sources(target: str, others: list[str]) -> None:
    """The previous target was no source only because it was held out: a new target returns it to the
    sources (else cartoon -> sketch -> cartoon silently trains on two domains instead of three), and
    the rule that a slider turned off chooses K and lam again."""
    previous = st.session_state.get("ctl_previous_target")
    st.session_state["ctl_previous_target"] = target
    if previous is not None and previous != target:
        back_to_the_rule()  # a K and lam set by hand for one target (e.g. 16 and 30) are no choice for another
    kept = st.session_state.get("ctl_sources")
    if previous in others and kept is not None and previous not in kept:
        st.session_state["ctl_sources"] = [d for d in others if d in kept or d == previous]


def _forget_other_data_sets_domains(emb: EmbeddingSet) -> None:
    """A domain choice belongs to its data set: another one (domains and classes differ; the
    demo's domain names recur in PACS) starts from the defaults, even where a name is the same."""
    data_set = [list(emb.domain_names), list(emb.class_names)]
    if st.session_state.get("ctl_domains_of", data_set) != data_set:
        for key in ("ctl_target", "ctl_sources", "ctl_previous_target"):
            st.session_state.pop(key, None)
    st.session_state["ctl_domains_of"] = data_set


def projection_ui(emb: EmbeddingSet, default_target: str, start: dict, target_box=None) -> ProjectionChoice:
    """Method, baselines, pair sets, prompts and how K and lam are chosen (sliders: k_lam_ui)."""
    target, sources = domains_ui(emb, default_target, target_box)
    names = list(methods.ALL_METHODS)
    method = st.selectbox("Method", names, format_func=methods.label, key=_valid("ctl_method", names, "icm"),
                          help="; ".join(f"{spec.label}: {spec.description}" for spec in methods.SPECS))
    rest = [m for m in names if m != method]
    baselines = st.multiselect("Baselines to compare", rest, format_func=methods.label,
                               key=_valid_multi("ctl_baselines", rest, [m for m in start["baselines"] if m in rest]))
    pair_names = [p.name for p in emb.pairs]
    wanted = [p for p in start["pair_sets"] or pair_names if p in pair_names]
    wanted += [p for p in pair_names if p.startswith(OWN_PREFIXES) and p not in wanted]  # given to be fitted on
    pairs = st.multiselect("Fit on pair sets", pair_names, key=_valid_multi("ctl_pairs", pair_names, wanted or None))
    prompt_sets = [p for p in evaluation.PROMPT_SETS if p == "classes" or emb.look_prompts]
    prompts = st.radio("Zero-shot prompts", prompt_sets, format_func=evaluation.PROMPT_SETS.get,
                       key=_valid("ctl_prompts", prompt_sets, "classes"),
                       help="'usual source look' names each class with its most frequent colour and scene in the "
                            "source training rows ('a photo of a red circle in the snow.'): a shortcut in words")
    lam_mode = st.radio("lam scale", ["absolute", "relative"], horizontal=True,
                        key=_default("ctl_lam_mode", start["lam_mode"]),
                        help="relative: lam = 1 weighs embedding energy and intervention energy equally")
    rules = list(SELECTIONS)
    selection = st.selectbox("Choose K and λ by", rules, format_func=SELECTIONS.get,
                             key=_valid("ctl_selection", rules, start["selection"] or "off"),
                             help="Every rule reads source domains only; moving a slider turns selection off.")
    protocols = [evaluation.LINEAR_PROBE, evaluation.ZERO_SHOT]
    protocol = st.radio("Selection scores the", protocols, horizontal=True, disabled=selection == "off",
                        key=_valid("ctl_select_protocol", protocols, evaluation.LINEAR_PROBE))
    eval_protocol, task, keep = protocol_ui()
    choice_mode = st.radio("The model choice reads", list(defaults.CHOICE_MODES), format_func=CHOICE_MODE_LABELS.get,
                           key=_valid("ctl_choice_mode", list(defaults.CHOICE_MODES), defaults.CHOICE),
                           help="Never a target label. The unlabelled target images help where a probe's shortcut "
                           "breaks, but on fresh worlds they also once deployed a broken model (docs/CHOICE.md), "
                           "so source data only is the default.")
    return ProjectionChoice(target, sources, method, tuple(baselines), lam_mode, selection, protocol, prompts,
                            tuple(pairs), eval_protocol, task, keep, choice_mode)


CHOICE_MODE_LABELS = {"source-only": "source data only", "unlabelled-target": "source data and the target's unlabelled images"}


TASK_LABELS = {"domain_shift": "Domain shift (all classes)", "open_class": "Open class (50/50 base / new)"}


def protocol_ui() -> tuple[str, str, bool]:
    """Evaluation protocol (ours or the released code's), task, and whether prompts naming the target stay."""
    from clip_icm.protocols import PROTOCOLS

    names = PROTOCOLS.available()
    protocol = st.radio("Evaluation protocol", names, format_func=lambda n: PROTOCOLS.get(n).label,
                        horizontal=True, key=_valid("ctl_protocol", names, "ours"),
                        help="released code: image pairs only, the one prompt 'a photo of a {}.', absolute lam, "
                        "LogisticRegression(C=0.316) on raw projected features, the target's 20% holdout, fp32")
    task = st.radio("Task", list(TASK_LABELS), format_func=TASK_LABELS.get, horizontal=True,
                    key=_valid("ctl_task", list(TASK_LABELS), "domain_shift"),
                    help="open class: fit on half the classes (seeded), score base and new classes zero-shot")
    keep = st.checkbox("Keep text prompts that name the target domain", key=_default("ctl_keep_styles", False),
                       help="Off (default): 'a sketch of a {}.' is left out of every fit when sketch is held out, "
                       "since it is prior knowledge of the target's shift.")
    return protocol, task, bool(keep)


HAND_SET_FROM = "ctl_hand_set_from"  # the rule a slider move turned off, for back_to_the_rule


def _selection_off() -> None:
    if st.session_state.get("ctl_selection", "off") != "off":
        st.session_state[HAND_SET_FROM] = st.session_state["ctl_selection"]
    st.session_state["ctl_selection"] = "off"


def back_to_the_rule() -> None:
    """Undo a slider's hand setting: the rule that chose K and lam before chooses them again."""
    rule = st.session_state.pop(HAND_SET_FROM, None)
    if rule is not None:
        st.session_state["ctl_selection"] = rule


def k_lam_ui(dim: int, start: dict, chosen: tuple[int, float] | None, method: str) -> tuple[int, float]:
    """K and lam sliders; they show the chosen pair while a rule chooses, and moving one turns the rule off.
    A slider the method does not use (MethodSpec.hyperparameters) is greyed out and says so."""
    spec = methods.spec(method)
    if chosen is not None:
        st.session_state["ctl_K"], st.session_state["ctl_lam"] = chosen
    st.session_state["ctl_K"] = min(max(1, st.session_state.get("ctl_K", start["K"])), dim)
    K = st.slider("K (invariant dimensions)", 1, dim, key="ctl_K", on_change=_selection_off,
                  disabled=not spec.tunes_k, help=None if spec.tunes_k else f"{spec.label} does not use K")
    lam = st.select_slider("lam (intervention weight)", LAMS, key=_valid("ctl_lam", list(LAMS), start["lam"]),
                           on_change=_selection_off, disabled=not spec.tunes_lam,
                           help=None if spec.tunes_lam else f"{spec.label} does not use lam")
    return int(K), float(lam)


def _valid_multi(key: str, options: list[str], default: list[str] | None = None) -> str:
    """Drop kept choices that are no longer options; fall back to ``default`` (all options)."""
    default = options if default is None else default
    if key not in st.session_state:
        st.session_state[key] = default
        return key
    kept = [v for v in st.session_state[key] if v in options]
    st.session_state[key] = kept if kept or not default else default
    return key


def eval_config(choice: ProjectionChoice, K: int, lam: float, names: tuple[str, ...]) -> evaluation.EvalConfig:
    return service.eval_config(K, lam, choice.lam_mode, names, choice.pair_sets or None, choice.prompts,
                               choice.eval_protocol, choice.keep_target_styles)


def colour_ui() -> str:
    return st.radio("Colour by", ["class", "domain"], horizontal=True, key=_default("ctl_colour", "class"))


def map_points(n_rows: int) -> int:
    """What map_points_ui returns in this run, read before it is drawn (the page asks for its layouts first)."""
    if n_rows <= service.MAP_POINTS:
        return service.MAP_POINTS
    return int(st.session_state[_default("ctl_map_points", service.MAP_POINTS)])


def map_points_ui(n_rows: int) -> int:
    """Every point up to service.MAP_POINTS; above that a visible cap (a subsample stratified by
    domain and class) that the user can raise, to every point up to service.DRAW_LIMIT."""
    if n_rows <= service.MAP_POINTS:
        return service.MAP_POINTS
    cap = st.number_input("Points on the maps", min(1000, service.MAP_POINTS), min(n_rows, service.DRAW_LIMIT),
                          step=1000, key=_default("ctl_map_points", service.MAP_POINTS),
                          help="UMAP's time grows with the number of points (about a minute for both maps at "
                               f"20,000 on 2 cores, three at 50,000); a map draws at most {service.DRAW_LIMIT:,}.")
    st.caption(f"Showing {min(int(cap), n_rows):,} of {n_rows:,} images: a subsample stratified by domain and "
               "class (every domain and class keeps its share; seed 0, the same points on every run).")
    return int(cap)


def sweep_ui() -> bool:
    return st.toggle("Run the sweep (a few seconds per grid point)", key=_default("ctl_sweep", False))


# ---------------------------------------------------------------- the on-disk cache

def cache_ui(emb: EmbeddingSet) -> None:
    """The cache's size and bound (for the whole server), and clearing this data set's entries:
    the calls of ``python -m clip_icm cache``."""
    from clip_icm import cache
    from clip_icm.resources import cache_dir

    with st.expander("Cache"):
        try:
            report = cached.cache_info(str(cache_dir()))
            st.caption(f"{cache.format_size(report['total_bytes'])} in `{report['folder']}`: {report['entries']} "
                       f"entries ({cache.format_size(report['entry_bytes'])}), the demo world, UMAP kernels and "
                       "memos.")
        except InvalidInput as e:  # a bad $CLIP_ICM_CACHE_MAX_SIZE (every write says so too): fixed below
            st.error(str(e))
        # applied on change only: the bound is the server's, and another session may have set it since
        st.text_input("Size bound (e.g. 2GB; empty: none)", value=os.environ.get(cache.MAX_SIZE_VAR, ""),
                      key="cache_bound", on_change=_apply_bound,
                      help="The entries are kept under it, the least recently used removed first; "
                           f"for this server (${cache.MAX_SIZE_VAR}).")
        name = emb.origin.get("dataset", "")
        if name and st.button(f"Clear this data set's cache ({name})", key="cache_clear_dataset",
                              help="Its embeddings, pairs, layouts and kept results leave the disk; what this "
                                   "page holds in memory stays until it is needed again."):
            _said(cache.clear(dataset=emb.origin.get("folder") or name), f"of {name}")
        note = st.session_state.pop("cache_note", None)
        if note is not None:
            (st.error if note[0] == "error" else st.caption)(note[1])


def _apply_bound() -> None:
    from clip_icm import cache

    try:
        _said(cache.bound_this_process(st.session_state["cache_bound"]), "to stay under the bound")
    except InvalidInput as e:
        st.session_state["cache_note"] = ("error", str(e))


def _said(removed, why: str) -> None:
    """Keep what a removal did for the expander to show (a callback runs before the page draws)."""
    from clip_icm.cache import format_size

    cached.cache_info.clear()
    busy = f"; {removed.busy} in use were left." if removed.busy else "."
    st.session_state["cache_note"] = ("done", f"Removed {removed.entries} entries ({format_size(removed.bytes)}) "
                                              f"{why}{busy}")
