"""What to embed and how (plain values from the controls), the embeddings themselves, and the model
and data choices the controls offer (architectures, devices, folders and their allowed roots)."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_icm import defaults, evaluation
from clip_icm.embeddings import EmbeddingSet
from clip_icm.errors import InvalidInput
from clip_icm.service.base import USER_ERRORS, Progress, ServiceError, content_key, guard, message
from clip_icm.service.maps import thumbnail

SOURCES = {
    "demo": "Bundled demo (ToyDomains + toy-clip)",
    "folder": "DomainBed-layout folder",
    "synthetic": "Synthetic SCM (no images)",
}


DATA_ROOTS_VAR = "CLIP_ICM_DATA_ROOTS"
# What a user can get wrong (the project's UserError), plus what the machine refuses (a missing or
# unreadable file, a full disk: OSError); anything else is a bug and surfaces as one.


@dataclass(frozen=True)
class InterventionChoice:
    """Which interventional pairs to build (plain values, straight from the controls).

    image_ops: image operations, one drawn at random per pair when several (as in the paper);
    strengths: ((op, ((param, value), ...)), ...); text_banks: ((bank name, (template, ...)), ...);
    true_swaps: factors to re-render (bundled world only); n_pairs: image pairs (0 = one per image);
    look_prompts: also embed the "usual source look" zero-shot prompts (bundled world only);
    intervened_val: which intervened validation sets (pipeline.INTERVENED_VAL_KINDS; None = automatic);
    text_pairs / image_pairs: the user's caption pairs and image pairs files (user_pairs), checked
    against the allowed folders by :func:`pairs_preview` before they get here.
    """

    image_ops: tuple[str, ...] = defaults.IMAGE_OPS
    strengths: tuple = ()
    text_banks: tuple = ()
    true_swaps: tuple[str, ...] = ()
    cross_modal: bool = False
    n_pairs: int = 0
    look_prompts: bool = False
    intervened_val: tuple[str, ...] | None = None
    seed: int = 0
    text_pairs: tuple[str, ...] = ()
    image_pairs: tuple[str, ...] = ()


@dataclass(frozen=True)
class EmbeddingRequest:
    """Where the embeddings come from, as plain values: turned into the pipeline's configs
    only when loading, so that the controls need not import torch."""

    source: str = "demo"
    root: str = ""
    dataset: str | None = None
    max_per_domain: int | None = None
    model: str = "toy-clip"
    pretrained: str | None = None
    device: str = "auto"
    precision: str = "auto"
    interventions: InterventionChoice = InterventionChoice()
    synthetic: object = None  # scm.SCMConfig for the synthetic source
    n_per_domain: int = 150

    @property
    def key(self) -> str:
        """Content key of the request, and of the files it names by path that a user may edit in
        place (a manifest, pairs files): an edited file is another request, never stale embeddings."""
        files = ((self.root,) if self.source == "folder" else ()) + self.interventions.text_pairs
        return content_key(self, _stamps(files + self.interventions.image_pairs))

    @property
    def model_label(self) -> str:
        if self.source == "synthetic":
            return "synthetic SCM"
        return self.model + (f" / {self.pretrained}" if self.pretrained else "")


def _stamps(paths: tuple[str, ...]) -> tuple:
    """(size, mtime in ns) of each path that is a file; () for a folder or a path that is not there."""
    out = []
    for path in paths:
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            out.append(())
            continue
        out.append((info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else ())
    return tuple(out)


def load_embeddings(request: EmbeddingRequest, progress: Progress | None = None,
                    notes: list[str] | None = None, store=None) -> EmbeddingSet:
    """Embeddings for a request, through ``store`` (an EmbeddingStore; None: the user's cache folder);
    user errors become :class:`ServiceError`. What the scan
    noted (a domain without readable images, a class missing from a domain) and the files
    skipped are appended to ``notes`` when given, so that the page can show them. They come
    from the scan's report, not from capturing warnings: ``warnings.catch_warnings`` is
    process-wide, so it would also catch (and mute) another thread's (the UMAP warm-up's)."""
    found: list[str] = []
    emb = _load(request, progress, found, store)
    if notes is not None:
        notes.extend(found)
    return emb


def _load(request: EmbeddingRequest, progress: Progress | None, notes: list[str], store) -> EmbeddingSet:
    if request.source not in SOURCES:
        raise ServiceError(f"unknown data source {request.source!r}; choose one of {', '.join(SOURCES)}")
    if request.source == "folder" and not request.root:
        raise ServiceError("Enter the folder that holds the DomainBed data sets.")
    try:
        if request.source == "synthetic":
            return _synthetic(request)
        return _pipeline_embeddings(request, progress, notes, store)
    except ServiceError:
        raise
    except USER_ERRORS as e:
        raise ServiceError(f"Could not build the embeddings: {message(e)}") from e


def _pipeline_embeddings(request: EmbeddingRequest, progress: Progress | None, notes: list[str],
                         store) -> EmbeddingSet:
    from clip_icm import backend, pipeline  # lazy: pulls in torch

    root = None
    if request.source == "folder":
        root = str(_data_path(request.root, data_roots(exposed=False), request.dataset))
    data = pipeline.DataConfig(root=root, dataset=request.dataset, max_per_domain=request.max_per_domain)
    model = backend.ModelConfig(request.model, request.pretrained, request.device, request.precision)
    run = pipeline.embed_dataset(data, model, intervention_config(request.interventions), progress=progress,
                                 store=store)
    notes.extend(run.scan.notes)
    if run.skipped:
        examples = "; ".join(f"{Path(p).name}: {why}" for p, why in run.skipped[:3])
        notes.append(f"{len(run.skipped)} file(s) skipped (e.g. {examples}).")
    return run.embeddings


def text_banks(bundled_world: bool = False) -> dict:
    """The text banks a user can pick: the registered ones, plus the bundled world's own
    vocabulary (toy-clip never read the generic banks' words) when that is the data."""
    from clip_icm.interventions import TEXT_BANKS

    banks = {name: TEXT_BANKS.get(name) for name in TEXT_BANKS.available()}
    if bundled_world:
        from clip_icm.toydomains import text_bank

        banks["toydomains"] = text_bank()
    return banks


def intervention_config(choice: InterventionChoice):
    """The pipeline's InterventionConfig; an edited bank becomes a user bank (anchor "a photo of a {}.")."""
    from clip_icm.interventions import TextBank
    from clip_icm.pipeline import InterventionConfig

    known = text_banks(bundled_world=True)
    banks = []
    for name, templates in choice.text_banks:
        same = name in known and tuple(templates) == known[name].variants
        banks.append(known[name] if same else TextBank.from_strings(name, templates))

    return InterventionConfig(image=tuple(choice.image_ops), text_banks=tuple(banks), true_swaps=choice.true_swaps,
                              cross_modal=choice.cross_modal, n_pairs=choice.n_pairs or None, seed=choice.seed,
                              strengths=choice.strengths, look_prompts=choice.look_prompts,
                              intervened_val=choice.intervened_val, text_pairs=choice.text_pairs,
                              image_pairs=choice.image_pairs)


# The synthetic source's environments: vectors an SCM draws, not images, so not named after PACS's domains.
SYNTHETIC_DOMAINS = ("env 1", "env 2", "env 3", "env 4")


def _synthetic(request: EmbeddingRequest) -> EmbeddingSet:
    from clip_icm import scm

    return scm.make_embedding_set(request.synthetic or scm.SCMConfig(), n_per_domain=request.n_per_domain,
                                  domains=SYNTHETIC_DOMAINS)


def default_target(emb: EmbeddingSet, source: str) -> str:
    """The domain to hold out first: the demo's shifted domain, else the last one
    (the synthetic world shifts its last domain)."""
    if source == "demo":
        from clip_icm.toydomains import DEMO_RECIPE

        if DEMO_RECIPE.target_domain in emb.domain_names:
            return DEMO_RECIPE.target_domain
    return emb.domain_names[-1]


def restrict_domains(emb: EmbeddingSet, keep: tuple[str, ...]) -> EmbeddingSet:
    """The EmbeddingSet without the domains not in ``keep`` (rows and pairs)."""
    for domain in emb.domain_names:
        if domain not in keep:
            emb = evaluation.without_domain(emb, domain)
    return emb


def describe(emb: EmbeddingSet) -> dict[str, object]:
    """Counts for a one-line summary of an EmbeddingSet."""
    return {
        "images": len(emb.labels), "dim": emb.features.shape[1], "classes": len(emb.class_names),
        "domains": len(emb.domain_names), "pairs": {p.name: len(p.z) for p in emb.pairs},
    }


@dataclass(frozen=True)
class PairExample:
    """One interventional pair to show: two images (PIL) or two captions."""

    caption: str
    before: object
    after: object


def pair_examples(request: EmbeddingRequest, emb: EmbeddingSet, pair_set: str, n: int = 4) -> list[PairExample]:
    """A few pairs of ``pair_set`` (or of an intervened validation set) as the pipeline makes
    them: images of different classes with their intervened versions, or prompt pairs."""
    own_images = pair_set.removeprefix("val ").startswith("image-pairs:")
    return examples_of_pairs(intervention_config(request.interventions), emb, pair_set, n,
                             _data_folder(request) if own_images else None)


def examples_of_pairs(cfg, emb: EmbeddingSet, pair_set: str, n: int = 4, folder: Path | None = None
                      ) -> list[PairExample]:
    """:func:`pair_examples` from the pipeline's InterventionConfig ``cfg`` (what the CLI holds);
    ``folder``: the data set's folder, which an image pairs file's paths are relative to."""
    from clip_icm.pipeline import intervened_image

    if pair_set.startswith("text:"):
        return _text_examples(cfg, emb, pair_set, n)
    if pair_set.startswith("captions:"):
        return _caption_examples(cfg, pair_set, n)
    if pair_set.removeprefix("val ").startswith("image-pairs:"):
        if folder is None:
            raise ServiceError(f"{pair_set}: showing an image pairs file needs its data folder")
        return _image_pair_examples(cfg, folder, pair_set.removeprefix("val "), n)
    if emb.paths is None or not str(emb.paths[0]):
        raise ServiceError(f"{pair_set}: these embeddings have no image files to show")
    pool = ~emb.is_train if any(c.name == pair_set for c in emb.intervened_val) else emb.is_train
    rows = [int(np.flatnonzero(pool & (emb.labels == c))[0]) for c in np.unique(emb.labels[pool])][:n]
    return [PairExample(f"{emb.class_names[emb.labels[r]]} / {emb.domains[r]}",
                        thumbnail(emb, r, size=112),
                        guard(f"Could not show {pair_set}", intervened_image, str(emb.paths[r]), pair_set, cfg)
                        .resize((112, 112)))
            for r in rows]


def _text_examples(cfg, emb: EmbeddingSet, pair_set: str, n: int) -> list[PairExample]:
    from clip_icm.interventions import make_text_pairs, resolve_banks

    banks = [b for b in resolve_banks(cfg.text_banks) if f"text:{b.name}" == pair_set]
    if not banks:
        raise ServiceError(f"no text pair set {pair_set!r} in these interventions")
    texts, texts_do, index = make_text_pairs(emb.class_names, banks, cfg.text_pairs_per_class, cfg.seed)
    first = [int(np.flatnonzero(index == c)[0]) for c in range(len(emb.class_names))][:n]  # one pair per class
    return [PairExample(emb.class_names[index[i]], texts[i], texts_do[i]) for i in first]


def _caption_examples(cfg, pair_set: str, n: int) -> list[PairExample]:
    from clip_icm.user_pairs import read_caption_pairs

    for path in cfg.text_pairs:
        own = guard(f"Could not read {pair_set}", read_caption_pairs, path)
        if own.name == pair_set:
            classes = own.classes or ("",) * len(own.texts)
            return [PairExample(c, t, t_do) for c, t, t_do in zip(classes, own.texts, own.texts_do)][:n]
    raise ServiceError(f"no caption pairs file makes {pair_set!r} in these interventions")


def _image_pair_examples(cfg, folder: Path, pair_set: str, n: int) -> list[PairExample]:
    """The first pairs of an image pairs file whose two files decode, as thumbnails."""
    from clip_icm.datasets import load_image
    from clip_icm.user_pairs import read_image_pairs

    for path in cfg.image_pairs:
        own = guard(f"Could not read {pair_set}", read_image_pairs, path)
        if own.name != pair_set:
            continue
        out = []
        for first, second in zip(own.paths, own.paths_do):
            try:
                images = [load_image(folder / p).resize((112, 112)) for p in (first, second)]
            except (OSError, ValueError):  # the pipeline skipped and reported this pair
                continue
            out.append(PairExample(first, *images))
            if len(out) == n:
                break
        return out
    raise ServiceError(f"no image pairs file makes {pair_set!r} in these interventions")


def _data_folder(request: EmbeddingRequest) -> Path:
    """The folder the request's images lie in (the paths of image pairs files are relative to it)."""
    from clip_icm import datasets

    if request.source != "folder":
        from clip_icm.toydomains import ensure_demo_data

        return Path(ensure_demo_data())
    path = _data_path(request.root, data_roots(exposed=False), request.dataset)
    if datasets.is_manifest(path):
        return path.parent
    return datasets.DATASETS.get(request.dataset).locate(path) if request.dataset else path


def open_clip_architectures() -> list[str]:
    import open_clip

    return list(open_clip.list_models())


def open_clip_tags(arch: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(arch))


def device_and_precision(device: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """What a model config would run on, without building the model."""
    from clip_icm import backend

    chosen = backend.pick_device(device)
    return chosen, backend.pick_precision(precision, chosen)


def has_true_factors(source: str, root: str = "", dataset: str | None = None) -> bool:
    """True do-interventions need the generator's factors.csv: the demo, or a ToyDomains folder."""
    if source == "demo":
        return True
    return source == "folder" and bool(root) and defaults.has_factors(root, dataset)


def true_factor(request: EmbeddingRequest, emb: EmbeddingSet, factor: str = "colour") -> np.ndarray | None:
    """Each row's true value of a factor of the ToyDomains world (e.g. its colour, the demo's
    shortcut), read from the generator's factors.csv; None where the data have no such table."""
    if not has_true_factors(request.source, request.root, request.dataset):
        return None
    return true_factor_in(_data_folder(request), emb, factor)


def true_factor_in(folder: str | os.PathLike, emb: EmbeddingSet, factor: str = "colour") -> np.ndarray | None:
    """:func:`true_factor` of the images of ``emb`` in ``folder`` (a ToyDomains world's, holding its
    factors.csv); None where there is no such table or it does not list every row."""
    from clip_icm.toydomains import load_factors

    if emb.paths is None:
        return None
    folder = Path(folder)
    try:
        table = load_factors(folder)
    except (OSError, InvalidInput):
        return None
    relative = [os.path.relpath(str(p), folder) for p in emb.paths]
    if factor not in table.columns or not set(relative) <= set(table.index):
        return None
    return table.loc[relative, factor].astype(str).to_numpy()


def data_roots(exposed: bool) -> tuple[Path, ...] | None:
    """The folders a data path must lie in, or None for no limit.

    ``$CLIP_ICM_DATA_ROOTS`` (folders joined by ``os.pathsep``) when set; else, when the page
    is served beyond this machine (``exposed``), the clip-icm cache folder (where the demo world is
    generated) and the user's home, so that whoever reaches the port cannot browse the machine's
    files; else no limit. The uploads folder (uploads.uploads_dir()) is always among them: it holds
    only what was uploaded through the page.
    """
    from clip_icm.uploads import uploads_dir

    listed = [p for p in os.environ.get(DATA_ROOTS_VAR, "").split(os.pathsep) if p.strip()]
    if listed:
        return tuple(Path(p).expanduser().resolve() for p in listed) + (uploads_dir().resolve(),)
    if exposed:
        from clip_icm.resources import cache_dir

        return (cache_dir().resolve(), Path.home().resolve())
    return None


def folder_path(root: str, roots: tuple[Path, ...] | None = None, kind: str = "Folder") -> Path:
    """The folder a user typed, resolved (``~`` expanded, links followed), or a ServiceError
    saying why it may not be read: absent, or outside ``roots`` (see :func:`data_roots`).
    ``kind="File"``: a file instead (a manifest, a pairs file), under the same rules."""
    if not root or not root.strip():
        raise ServiceError(f"{kind} not found: (empty)")
    shown = _shown_path(root)
    try:
        path = Path(root.strip()).expanduser().resolve()
        if roots is not None and not any(path == r or r in path.parents for r in roots):
            allowed = ", ".join(str(r) for r in roots)
            raise ServiceError(f"{shown} is outside the folders this dashboard may read ({allowed}); "
                               f"the server's operator can list others in ${DATA_ROOTS_VAR}.")
        if not (path.is_dir() if kind == "Folder" else path.is_file()):
            raise ServiceError(f"{kind} not found: {shown}")
    # ~nosuchuser: RuntimeError; a NUL byte: ValueError; a name longer than the system allows: OSError
    except (RuntimeError, ValueError, OSError) as e:
        raise ServiceError(f"{kind} not found: {shown} ({e.strerror if isinstance(e, OSError) else e})") from None
    return path


def _data_path(root: str, roots: tuple[Path, ...] | None, dataset: str | None) -> Path:
    """A data set's folder or manifest file, as :func:`folder_path` checks it (a folder also
    must not be too broad to scan whole)."""
    from clip_icm import datasets

    if datasets.is_manifest(root.strip()):
        return folder_path(root, roots, kind="File")
    path = folder_path(root, roots)
    if dataset is None and too_broad(path):
        raise ServiceError(too_broad(path))
    return path


def upload_data(data: bytes, name: str) -> str:
    """An uploaded data set: a zip (of a DomainBed tree, or of images and a manifest) unpacked under
    the uploads module's guards, or a manifest table kept as it is; returns what to scan (a folder
    or a manifest) for the data field."""
    from clip_icm import uploads
    from clip_icm.tables import table_format

    if name.lower().endswith(".zip"):
        return str(uploads.data_in(guard("Could not unpack the upload", uploads.unpack_zip, data)))
    if table_format(name) is None:
        raise ServiceError(f"Upload a .zip of the data set, or a manifest (.csv, .parquet, .jsonl); got {name!r}")
    return str(guard("Could not keep the upload", uploads.save_upload, data, name))


def upload_pairs(data: bytes, name: str) -> str:
    """An uploaded pairs file, kept by content; returns its path for the pairs field."""
    from clip_icm import uploads
    from clip_icm.tables import table_format

    if table_format(name) is None:
        raise ServiceError(f"A pairs file is a .csv, .jsonl or .parquet table; got {name!r}")
    return str(guard("Could not keep the upload", uploads.save_upload, data, name))


@dataclass(frozen=True)
class PairsPreview:
    """What a pairs file holds, for the sidebar: its pair set name, usable rows, the first few
    (before, after, the words that differ), what it skips and what it warns about."""

    name: str
    path: str
    rows: int
    examples: tuple[tuple[str, str, str], ...]
    skipped: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]


def pairs_preview(path: str, kind: str, roots: tuple[Path, ...] | None = None, n: int = 3) -> PairsPreview:
    """Read the ``kind`` ("captions" or "images") pairs file at ``path``, a file inside ``roots``
    (see :func:`data_roots`: an exposed page reads no file outside them, not even to say what is
    wrong with it)."""
    from clip_icm.interventions import variant_words
    from clip_icm.user_pairs import read_caption_pairs, read_image_pairs

    resolved = str(folder_path(path, roots, kind="File"))
    if kind == "captions":
        own = guard("Could not read the caption pairs", read_caption_pairs, resolved)
        firsts, seconds, notes = own.texts, own.texts_do, own.notes
        words = [variant_words(t, t_do) for t, t_do in zip(firsts[:n], seconds[:n])]
    else:
        own = guard("Could not read the image pairs", read_image_pairs, resolved)
        firsts, seconds, notes, words = own.paths, own.paths_do, (), [""] * n
    return PairsPreview(own.name, resolved, len(firsts), tuple(zip(firsts[:n], seconds[:n], words)), own.skipped,
                        tuple(notes))


def _shown_path(root: str, limit: int = 120) -> str:
    """What the user typed, fit for a message: control characters (a NUL) escaped, and a
    very long path shortened in the middle."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in root.strip())
    return text if len(text) <= limit else f"{text[:limit // 2]}…{text[-limit // 2:]} ({len(root):,} characters)"


def too_broad(path: Path) -> str | None:
    """Why scanning ``path`` itself as one data set would walk a whole filesystem or home
    folder (``/``, a top-level folder, the home folder or above it), else None. Looking for
    data sets *inside* such a folder is fine: that reads two levels only."""
    home = Path.home().resolve()
    if len(path.parts) <= 2 or path == home or path in home.parents:
        return (f"{path} is too broad to scan as one data set (it would walk a whole filesystem or home "
                "folder); enter the folder that holds the domain folders.")
    return None


def detect_folder(root: str, roots: tuple[Path, ...] | None = None) -> dict[str, object]:
    """What a folder holds: known DomainBed datasets, or a DomainBed-shaped folder itself (and,
    when it is neither, why not). ``roots``: see :func:`data_roots`."""
    from clip_icm import datasets

    if datasets.is_manifest(root.strip()):  # a table that lists the data set: scanned as it is embedded
        return {"datasets": [], "is_dataset": True, "path": str(folder_path(root, roots, kind="File")),
                "problem": None, "manifest": True}
    path = folder_path(root, roots)
    try:
        problem = too_broad(path) or (None if datasets.is_domainbed_folder(path) else datasets.layout_problem(path))
        found = datasets.detect_datasets(path)
    except OSError as e:  # a folder in it that may not be listed
        raise ServiceError(f"Could not read {root}: {e}") from e
    return {"datasets": found, "is_dataset": problem is None, "path": str(path), "problem": problem}
