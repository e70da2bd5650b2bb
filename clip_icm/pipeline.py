"""Images on disk + a model + interventions -> an :class:`EmbeddingSet`, through the store.

:func:`embed_dataset` does the work and returns an :class:`EmbeddingRun` (the
EmbeddingSet plus the report: skipped files, cache hits, whether the model was loaded);
:func:`build_embedding_set` returns just the EmbeddingSet.

Caching: images are embedded in chunks (per domain, at most ``chunk_size`` images each),
every chunk a store entry keyed by (model key, the content hashes of its images, the
intervention with its parameters and seed). A run that is killed keeps every finished
chunk and the next run computes only the missing ones; a run whose chunks are all
stored never builds the model. Text embeddings are entries keyed by their strings.

Pairs (METHOD.md step 1) are drawn from the training split only (``is_train``), so that
the validation rows that choose K, lam and C never shaped the projection:

- ``image:random``: one random op of the selected ones per image (the paper), or one
  pair set per op (``image:grayscale``, ...) with ``random_choice=False``;
- ``text:<bank>``: (anchor, variant) prompt pairs of each text bank, per class;
- ``cross-modal``: (f_I(x), f_T(variant prompt of x's class)); includes the modality gap;
- ``true:<factor>``: ToyDomains only: the same object re-rendered with another colour,
  background or style;
- ``image-pairs:<file>`` and ``captions:<file>``: a user's own image pairs and caption pairs
  (:mod:`clip_icm.user_pairs`); image pairs only where their first image is a training row.

Intervened validation rows (``EmbeddingSet.intervened_val``, for the "interventional"
selection rule; never fitted): every *validation* row with its variant factors changed:

- ``counterfactual:colour+background``: ToyDomains only: re-rendered with both the colour and
  the scene re-drawn;
- ``conflict@<target>``: ToyDomains only, one set per held-out target: re-rendered with the
  usual colour and scene of another class, that table read from the other domains' *training*
  rows (so a shortcut would point to that class);
- ``image:<...>``: the chosen image interventions applied to the validation rows (the generic,
  weaker check for folders whose factors are unknown);
- ``val image-pairs:<file>`` (kind "pairs"): a user's image pairs whose first image is a
  validation row, scored on their second image with the first's class. A user's caption pairs
  add none: text has no validation images of its own.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from clip_icm import background, defaults
from clip_icm.backend import (ClipBackend, ImageDecodeError, Intervention, ModelConfig, file_stamp, load_model,
                              model_key)
from clip_icm.datasets import (DomainScan, image_file_problem, is_manifest, load_image, readable_name, released_name,
                               scan_domain_folder, scan_manifest, split_mask)
from clip_icm.embeddings import EmbeddingSet, PairSet, PromptSet
from clip_icm.errors import InvalidInput, check_names
from clip_icm.hashing import file_digest
from clip_icm.interventions import (DEFAULT_TEMPLATE, IMAGE_INTERVENTIONS, TEXT_BANKS, ZERO_SHOT_TEMPLATES,
                                    RandomIntervention, TextBank, attribute_prompts, cross_modal_texts, cross_modal_words,
                                    make_image_intervention, make_text_pairs, resolve_banks, spurious_prompts,
                                    text_pair_words, variant_words)
from clip_icm.seeding import rng, seed_hash
from clip_icm.store import EmbeddingStore, atomic_write, make_key
from clip_icm.user_pairs import CaptionPairs, ImagePairs, pair_set_name, read_caption_pairs, read_image_pairs

# progress(stage, done, total). A stage's first report counts the items served from the cache (0 when
# none; all of them for a stage served whole, which then reports nothing more); later reports add the
# items computed. A front end shows the first as "served from cache" and rates only for the rest.
Progress = Callable[[str, int, int], None]
# What builds the encoder from a ModelConfig: load_model (this process, the default), or e.g.
# clip_icm.distributed.RayEncoder. It needs ClipBackend's embed_dim, iter_encode and encode_texts;
# the store's keys do not depend on it, so the local store serves what any engine wrote.
Engine = Callable[[ModelConfig], ClipBackend]


@dataclass(frozen=True)
class DataConfig:
    """Which images: ``root=None`` is the bundled ToyDomains demo (generated on first use); ``root`` a
    DomainBed-layout folder, or a manifest table (.csv, .jsonl, .parquet: datasets.scan_manifest)."""

    root: str | None = None
    dataset: str | None = None
    max_per_domain: int | None = None
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_per_domain is not None and self.max_per_domain < 1:
            raise InvalidInput(f"max_per_domain must be at least 1, got {self.max_per_domain}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InvalidInput(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.dataset is not None and self.root is None:  # else the demo would be evaluated under its name
            raise InvalidInput(f"dataset {self.dataset} needs a root, the folder that holds it")
        if self.dataset is not None and is_manifest(self.root):
            raise InvalidInput(f"dataset {self.dataset} names a folder under a data root; a manifest "
                               f"({self.root}) lists its images itself")


@dataclass(frozen=True)
class InterventionConfig:
    """Which interventional pairs to build (see the module docstring for the pair sets).

    image:          image ops (names in IMAGE_INTERVENTIONS); () for none
    strengths:      overrides of the ops' default strengths, hashable:
                    ``(("posterize", (("bits", (3, 3)),)), ...)``
    random_choice:  True = one pair set, a random op per pair (the paper); False = a set per op
    text_banks:     names in TEXT_BANKS or TextBank objects (user templates); () for none
    true_swaps:     ToyDomains factors to re-render ("colour", "background", "style")
    cross_modal:    also build (image, variant prompt) pairs
    n_pairs:        image pairs per pair set, a seeded subset of the training rows; None = all
    text_pairs_per_class: prompt pairs per class and bank
    templates:      ZERO_SHOT_TEMPLATES entry for the class prompts (text_features)
    intervened_val: which intervened validation sets to build: "counterfactual", "conflict"
                    (ToyDomains) and/or "image"; None = "counterfactual" where the folder has
                    factors.csv, else "image" when image ops are chosen
    look_prompts:   also embed, per held-out domain, prompts naming each class by its usual look
                    in the other domains' training rows (ToyDomains only)
    text_pairs:     caption pairs files (user_pairs.read_caption_pairs), one pair set each
    image_pairs:    image pairs files (user_pairs.read_image_pairs), one pair set each; n_pairs does
                    not subsample them (each row is a pair someone chose)
    """

    image: tuple[str, ...] = defaults.IMAGE_OPS
    strengths: tuple = ()
    random_choice: bool = True
    text_banks: tuple[str | TextBank, ...] = defaults.TEXT_BANKS
    true_swaps: tuple[str, ...] = ()
    cross_modal: bool = False
    n_pairs: int | None = defaults.N_PAIRS
    text_pairs_per_class: int = 8
    templates: str = "ensemble"
    intervened_val: tuple[str, ...] | None = None
    look_prompts: bool = False
    seed: int = 0
    text_pairs: tuple[str, ...] = ()
    image_pairs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Every name checked here, so that a typo fails before anything is embedded."""
        from clip_icm.toydomains import CHANGEABLE

        IMAGE_INTERVENTIONS.check(self.image)
        IMAGE_INTERVENTIONS.check(op for op, _ in self.strengths)
        TEXT_BANKS.check(b for b in self.text_banks if not isinstance(b, TextBank))
        ZERO_SHOT_TEMPLATES.check((self.templates,))
        check_names("true swap factor", self.true_swaps, CHANGEABLE)
        check_names("intervened validation set", self.intervened_val or (), INTERVENED_VAL_KINDS)
        for name, value in (("n_pairs", self.n_pairs), ("text_pairs_per_class", self.text_pairs_per_class)):
            if value is not None and value < 1:
                raise InvalidInput(f"{name} must be at least 1, got {value}")
        if self.cross_modal and not self.text_banks:  # it would build nothing and say nothing
            raise InvalidInput("cross-modal pairs pair each image with a variant prompt of the text banks: "
                               "choose at least one text bank")
        if "pairs" in (self.intervened_val or ()) and not self.image_pairs:
            raise InvalidInput("intervened validation 'pairs' reads the image pairs files: give at least one")
        _read_own_pairs(self)  # a bad file fails here, in one line, before anything is embedded


# The two variant factors the ToyDomains recipe can make spurious, re-drawn together.
COUNTERFACTUAL_CHANGE = ("colour", "background")
INTERVENED_VAL_KINDS = ("counterfactual", "conflict", "image", "pairs")


def _read_own_pairs(cfg: InterventionConfig) -> tuple[list[CaptionPairs], list[ImagePairs]]:
    """The user's caption and image pairs files of ``cfg``, read; two files of one pair set name
    are an error (their pairs would be indistinguishable in --pair-sets)."""
    captions = [read_caption_pairs(path) for path in cfg.text_pairs]
    images = [read_image_pairs(path) for path in cfg.image_pairs]
    names = [own.name for own in (*captions, *images)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInput(f"two pairs files make the pair set {twice[0]}: rename one of them")
    return captions, images


@dataclass
class EmbeddingRun:
    """An EmbeddingSet and how it was made.

    skipped:      (path, reason) of every file left out: by the folder scan, or because it
                  failed to decode while embedding; and (pairs file:line, reason) of every row of
                  the user's pairs files left out
    model_loaded: False when every vector came from the store
    computed / reused: number of store entries computed and reused
    """

    embeddings: EmbeddingSet
    scan: DomainScan
    skipped: list[tuple[str, str]]
    model_loaded: bool
    computed: int
    reused: int
    evicted: int = 0  # entries the store's size bound removed during the run
    notes: tuple[str, ...] = ()  # kept rows of the user's pairs files worth a look (user_pairs.CaptionPairs.notes)


def file_hash(path: str | Path) -> str:
    """Content hash of an image file (the cache key covers content, not names)."""
    return file_digest(path)[:32]


def chunk_indices(domains: np.ndarray, chunk_size: int) -> list[np.ndarray]:
    """Row indices split per domain (in order of appearance), at most ``chunk_size`` each."""
    chunks = []
    for domain in dict.fromkeys(domains.tolist()):
        rows = np.flatnonzero(domains == domain)
        chunks += [rows[i:i + chunk_size] for i in range(0, len(rows), chunk_size)]
    return chunks


class _Embedder:
    """Store-first embedding; builds the model on the first miss only."""

    def __init__(self, model: ModelConfig, store: EmbeddingStore, progress: Progress | None, chunk_size: int,
                 engine: Engine | None = None):
        self.config, self.store, self.progress, self.chunk_size = model, store, progress, chunk_size
        self.engine = engine
        self.key = model_key(model, memo_dir=store.root / "models")
        self._backend: ClipBackend | None = None
        self.computed = self.reused = 0
        self.origin: dict[str, str] = {}  # what the cache calls the data and model (set once scanned)

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> ClipBackend:
        self.load()
        return self._backend

    def load(self) -> None:
        """Build the model now (otherwise it is built on the first store miss)."""
        if self._backend is None:
            self._backend = (self.engine or load_model)(self.config)

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def images(self, stage: str, items: Sequence, hashes: np.ndarray, domains: np.ndarray,
               what: object = None, intervention: Intervention | None = None, seeds: np.ndarray | None = None,
               kind: str = "pairs") -> tuple[np.ndarray, dict[int, str]]:
        """Embeddings (n, D) float32 and {row: decode error}, chunk by chunk through the store;
        ``kind``: what the entries are to ``cache info`` (store.KINDS)."""
        if not len(items):  # no chunk to read D from: the model says it (a rare case, so loading it is fine)
            return np.zeros((0, self.backend.embed_dim), np.float32), {}
        chunks = chunk_indices(domains, self.chunk_size)
        job = _ImageJob(stage, items, chunks, [make_key("images", self.key, what, hashes[c].tolist()) for c in chunks],
                        intervention, seeds, kind)
        results: dict[int, _Chunk] = {}
        for j, key in enumerate(job.keys):
            entry = self.store.get_entry(key)
            failed = None if entry is None else _stored_failures(*entry)
            if failed is not None:
                results[j] = _Chunk(entry[0], failed)
        self.reused += len(results)
        done = sum(len(chunks[j]) for j in results)
        self._report(stage, done, len(items))
        missing = [j for j in range(len(chunks)) if j not in results]
        if missing:
            results.update(self._compute(job, missing, done))
        return job.assemble(results)

    def _compute(self, job: _ImageJob, missing: list[int], done: int) -> dict[int, _Chunk]:
        """Embed the ``missing`` chunks of ``job``, storing each as soon as it is complete;
        ``done`` rows were already reported to the progress callback."""
        chunks = job.chunks
        rows = np.concatenate([chunks[j] for j in missing])
        owner = np.concatenate([[j] * len(chunks[j]) for j in missing])
        dim = self.backend.embed_dim  # builds the model: this is the first miss
        buffers = {j: np.zeros((len(chunks[j]), dim), np.float32) for j in missing}
        failed: dict[int, dict[int, str]] = {j: {} for j in missing}
        pending = {j: len(chunks[j]) for j in missing}
        computed: dict[int, _Chunk] = {}
        sub_seeds = None if job.seeds is None else job.seeds[rows]
        for offset, batch, errors in self.backend.iter_encode(_Subset(job.items, rows), job.intervention, sub_seeds):
            for i in range(len(batch)):
                j = int(owner[offset + i])
                local = len(chunks[j]) - pending[j]
                buffers[j][local] = batch[i]
                if offset + i in errors:
                    failed[j][local] = errors[offset + i]
                pending[j] -= 1
                if pending[j] == 0:  # chunk complete: publish it now, so a kill loses nothing
                    self.store.put(job.keys[j], buffers[j], self.meta(job.kind, failed=failed[j]))
                    # float16 like a later cache hit, so both runs give identical numbers
                    computed[j] = _Chunk(buffers[j].astype(np.float16), failed[j])
                    self.computed += 1
            done += len(batch)
            self._report(job.stage, done, len(job.items))
        return computed

    def meta(self, kind: str, **more) -> dict:
        """An entry's metadata: its kind and origin (for ``cache info`` and clearing a data set), and ``more``."""
        return {"kind": kind, **self.origin, **more}

    def texts(self, stage: str, texts: Sequence[str], kind: str = "pairs") -> np.ndarray:
        key = make_key("texts", self.key, list(texts))
        hit = self.store.get(key)
        if hit is not None:
            self.reused += 1
            self._report(stage, len(texts), len(texts))  # served from the cache (Progress)
            return np.asarray(hit, np.float32)
        self._report(stage, 0, len(texts))
        array = self.backend.encode_texts(list(texts))
        self.store.put(key, array, self.meta(kind))
        self.computed += 1
        self._report(stage, len(texts), len(texts))
        return np.asarray(array.astype(np.float16), np.float32)  # same values as a later cache hit


def _stored_failures(vectors: np.ndarray, meta: dict) -> dict[int, str] | None:
    """The decode errors an image entry's metadata records, {row: reason}; None (so the chunk is
    embedded again) when they cannot be what :meth:`_Embedder._compute` wrote: not a mapping of
    rows of this chunk to texts, or naming a row that is not the zeros a failed image leaves."""
    failed = meta.get("failed", {})
    if not isinstance(failed, dict):
        return None
    rows = {}
    for row, reason in failed.items():
        if not (isinstance(row, str) and row.isdecimal() and isinstance(reason, str)):
            return None
        rows[int(row)] = reason
    if any(row >= len(vectors) or vectors[row].any() for row in rows):
        return None
    return rows


class _Chunk(NamedTuple):
    """One store entry's embeddings and the decode errors of its rows (by position in the chunk)."""

    vectors: np.ndarray
    failed: dict[int, str]


@dataclass(frozen=True)
class _ImageJob:
    """One :meth:`_Embedder.images` request: which images, how, and their split into store entries."""

    stage: str                      # progress label
    items: Sequence                 # paths or lazily rendered images
    chunks: list[np.ndarray]        # row indices of each store entry
    keys: list[str]                 # store key of each chunk
    intervention: Intervention | None
    seeds: np.ndarray | None        # per-row seed of the intervention
    kind: str                       # store.KINDS: "embeddings" or "pairs"

    def assemble(self, results: dict[int, _Chunk]) -> tuple[np.ndarray, dict[int, str]]:
        """All chunks back in row order: (n, D) float32 and {row: decode error}."""
        dim = next(iter(results.values())).vectors.shape[1]
        out = np.zeros((len(self.items), dim), np.float32)
        failed: dict[int, str] = {}
        for j, rows in enumerate(self.chunks):
            out[rows] = results[j].vectors
            failed.update({int(rows[local]): why for local, why in results[j].failed.items()})
        return out, failed


class _Subset:
    """A lazy view ``items[rows]`` (keeps lazily rendered items lazy)."""

    def __init__(self, items: Sequence, rows: np.ndarray) -> None:
        self.items, self.rows = items, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.items[int(self.rows[i])]


def scan_data(data: DataConfig) -> DomainScan:
    """The scan of ``data``: its folder or manifest (the bundled demo, generated on first use, when
    ``root`` is None)."""
    root = data.root
    if root is None:
        from clip_icm.toydomains import ensure_demo_data

        root = ensure_demo_data()
    if is_manifest(root):
        return scan_manifest(root, data.max_per_domain, data.seed)
    return scan_domain_folder(root, data.dataset, data.max_per_domain, data.seed)


def _pair_rows(is_train: np.ndarray, n_pairs: int | None, seed: int, name: str) -> np.ndarray:
    rows = np.flatnonzero(is_train)
    if n_pairs is not None and n_pairs < len(rows):
        rows = np.sort(rng("pair rows", seed, name).choice(rows, n_pairs, replace=False))
    return rows


def _image_interventions(cfg: InterventionConfig) -> list[tuple[str, object]]:
    if not cfg.image:
        return []
    for name in cfg.image:
        IMAGE_INTERVENTIONS.get(name)  # unknown names fail here, listing the valid ones
    strengths = {op: dict(params) for op, params in cfg.strengths}
    if cfg.random_choice and len(cfg.image) > 1:
        return [("image:random", RandomIntervention(cfg.image, strengths))]
    if cfg.random_choice:
        return [("image:random", make_image_intervention(cfg.image[0], **strengths.get(cfg.image[0], {})))]
    return [(f"image:{name}", make_image_intervention(name, **strengths.get(name, {}))) for name in cfg.image]


def planned_pair_sets(cfg: InterventionConfig) -> list[str]:
    """The names of the pair sets :func:`embed_dataset` builds for ``cfg``, known before any
    embedding (so a wrong ``--pair-sets`` name never costs an embedding run)."""
    names = [name for name, _ in _image_interventions(cfg)]
    names += [f"true:{change}" for change in cfg.true_swaps]
    names += [pair_set_name("image-pairs", path) for path in cfg.image_pairs]
    if cfg.text_banks:
        names += [f"text:{bank.name}" for bank in resolve_banks(cfg.text_banks)]
        names += ["cross-modal"] if cfg.cross_modal else []
    return names + [pair_set_name("captions", path) for path in cfg.text_pairs]


class _Counterfactuals:
    """ToyDomains true do-interventions, rendered lazily (inside the DataLoader workers)."""

    def __init__(self, rows: list[dict], change: str, seed: int) -> None:
        self.rows, self.change, self.seed = rows, change, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from clip_icm.toydomains import render_counterfactual

        return render_counterfactual(self.rows[i], self.change, self.seed)


def _factor_rows(scan: DomainScan) -> list[dict]:
    return _factor_rows_of(Path(scan.root), scan.paths)


def _factor_rows_of(root: Path, paths: Sequence[str]) -> list[dict]:
    """The true factors of the images at ``paths``: from ``root/factors.csv``, or from ``root`` itself
    when it is a manifest with the factor columns."""
    if not defaults.has_factors(str(root)):
        raise InvalidInput(f"true swaps need the ToyDomains dataset (a folder with factors.csv, or a manifest with "
                           f"its factor columns); {root} has none")
    from clip_icm.toydomains import load_factor_table

    table_file, folder = (root, root.parent) if is_manifest(root) else (root / "factors.csv", root)
    table = load_factor_table(table_file)
    relative = [str(Path(p).relative_to(folder)) for p in paths]
    absent = [r for r in relative if r not in table.index]
    if absent:
        raise InvalidInput(f"{table_file} has no factors for {len(absent)} image(s), e.g. {absent[0]}")
    return table.loc[relative].to_dict("records")


DEMO_DRAW_WAIT_S = 600  # for a world drawn in seconds; past that, scan_data draws it here
DRAWING_STAGE = "drawing the demo world and loading the model"


def start_drawing_missing_demo(data: DataConfig):
    """For the bundled demo (``data.root`` None) when its world is missing: a process drawing it
    (toydomains.draw_demo_data_elsewhere), so that the caller can load the model meanwhile (each
    takes about 4 s on one core); else None. Wait with background.wait(.., DEMO_DRAW_WAIT_S)."""
    if data.root is not None:
        return None
    from clip_icm.toydomains import draw_demo_data_elsewhere

    return draw_demo_data_elsewhere()


def embed_dataset(
    data: DataConfig = DataConfig(),
    model: ModelConfig = ModelConfig(),
    interventions: InterventionConfig = InterventionConfig(),
    store: EmbeddingStore | None = None,
    progress: Progress | None = None,
    chunk_size: int = 256,
    scan: DomainScan | None = None,
    engine: Engine | None = None,
) -> EmbeddingRun:
    """Scan, split, embed (through ``store``) and pair; see the module docstring.

    ``progress(stage, done, total)`` is called as work advances, per stage. ``scan``: the
    result of :func:`scan_data` for ``data`` when the caller already has it. ``engine``: what
    encodes the missing chunks (:data:`Engine`; default this process).
    """
    store = store if store is not None else EmbeddingStore()
    evicted_before = store.stats.evicted
    # a world that new has no stored embeddings, so the model loads meanwhile: unless the store has a
    # seed (the dashboard's, dashboard/demo_store.py), which may hold them all
    drawing = start_drawing_missing_demo(data) if scan is None else None
    if drawing is not None and progress is not None:
        progress(DRAWING_STAGE, 0, 1)
    embedder = _Embedder(model, store, progress, chunk_size, engine)
    if drawing is not None:
        if store.seed is None:
            embedder.load()
        background.wait(drawing, DEMO_DRAW_WAIT_S)  # should it fail, scan_data draws it here or says why not
        embedder._report(DRAWING_STAGE, 1, 1)
    scan = scan if scan is not None else scan_data(data)
    hashes = _hashes(scan.paths, progress, store.root / "hashes" / f"{make_key(scan.root)}.json")
    embedder.origin = _origin(data, scan, model)
    features, failed = embedder.images("images", scan.paths, hashes, scan.domains, kind="embeddings")
    keep = np.setdiff1d(np.arange(len(scan.paths)), list(failed))
    skipped = list(scan.skipped) + [(str(scan.paths[i]), f"unreadable image: {why}") for i, why in failed.items()]
    paths, labels, domains, hashes = scan.paths[keep], scan.labels[keep], scan.domains[keep], hashes[keep]
    features = features[keep]
    is_train = split_mask(labels, domains, data.val_fraction, data.seed)
    rows = _Rows(paths, hashes, labels, domains, features, is_train)
    checks = _intervened_val_kinds(interventions, scan)
    factor_rows = None
    if interventions.true_swaps or interventions.look_prompts or {"counterfactual", "conflict"} & set(checks):
        all_factor_rows = _factor_rows(scan)
        factor_rows = [all_factor_rows[i] for i in keep]
    class_names = list(scan.class_names)
    own_captions, own_images = _read_own_pairs(interventions)
    build = _Build(embedder, interventions, rows, factor_rows, class_names, scan.folder)
    pairs = _image_pairs(build)
    if interventions.true_swaps:
        pairs += _true_pairs(build)
    own_fit, own_val = _own_image_pairs(build, own_images, "pairs" in checks)
    pairs += own_fit + _text_pairs(build) + _caption_pairs(build, own_captions)
    intervened_val = _intervened_val(build, checks) + own_val
    look = _look_prompts(build) if interventions.look_prompts else {}
    templates = ZERO_SHOT_TEMPLATES.get(interventions.templates)
    prompts = [t.format(c) for t in templates for c in class_names]
    text = embedder.texts("class prompts", prompts, kind="embeddings").reshape(len(templates), len(class_names), -1)
    key = make_key("embedding set", embedder.key, hashes.tolist(), asdict(data),
                   _config_id(interventions, checks, own_captions + own_images))
    emb = EmbeddingSet(features, labels, domains, is_train, class_names, text, pairs, paths, key, intervened_val, look,
                       templates=tuple(templates), spurious=_spurious(build),
                       attribute_prompts=_attribute_prompts(build),
                       released_class_text=_released_class_text(embedder, scan.class_folders, class_names),
                       origin=embedder.origin)
    skipped += [row for own in (*own_captions, *own_images) for row in own.skipped] + build.skipped
    notes = tuple(note for own in own_captions for note in own.notes)
    return EmbeddingRun(emb, scan, skipped, embedder.loaded, embedder.computed, embedder.reused,
                        store.stats.evicted - evicted_before, notes)


DEMO_NAME = "ToyDomains demo"


def _origin(data: DataConfig, scan: DomainScan, model: ModelConfig) -> dict[str, str]:
    """What the cache calls these embeddings: the data set's name and folder, and the model. The demo's
    folder is left out: it lies in the cache folder, wherever that is, and an entry's meta must be the
    same in every cache for the dashboard's seed (dashboard/demo_store.py) to be one."""
    name = DEMO_NAME if data.root is None else (data.dataset or Path(scan.root).name)
    label = f"{model.name} / {model.pretrained}" if model.pretrained else model.name
    return {"dataset": name, "folder": "" if data.root is None else str(scan.root), "model": label}


def build_embedding_set(
    data: DataConfig = DataConfig(),
    model: ModelConfig = ModelConfig(),
    interventions: InterventionConfig = InterventionConfig(),
    store: EmbeddingStore | None = None,
    progress: Progress | None = None,
) -> EmbeddingSet:
    """The EmbeddingSet of :func:`embed_dataset` (use that for the skipped-files report)."""
    return embed_dataset(data, model, interventions, store, progress).embeddings


def _config_id(cfg: InterventionConfig, intervened_val: tuple[str, ...], own: list) -> dict:
    """The config as it was resolved for this folder: "automatic" intervened validation and the
    kinds it resolved to are one key, so both front ends' defaults share an EmbeddingSet key. The
    user's pairs files are their pair set names and content digests, not where they lie."""
    out = asdict(cfg)
    out["intervened_val"] = list(intervened_val)
    out["text_pairs"] = out["image_pairs"] = None
    out["own pairs"] = [[pairs.name, pairs.digest] for pairs in own]
    out["text_banks"] = [asdict(b) for b in resolve_banks(cfg.text_banks)] if cfg.text_banks else []
    return out


def _read_hash_memo(memo_file: Path) -> dict:
    """The remembered hashes; a missing or damaged memo (even valid JSON of another shape) is
    an empty one: it only saves reading files, so losing it costs time, never correctness."""
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _hashes(paths: np.ndarray, progress: Progress | None, memo_file: Path) -> np.ndarray:
    """Content hashes of the images; a file whose :func:`file_stamp` (size, mtime, inode,
    ctime) is unchanged since the last run keeps its remembered hash (reading a large
    dataset every run would cost more than the cache saves). Remembered hashes are the
    stage's items served from the cache (:data:`Progress`)."""
    memo, names = _read_hash_memo(memo_file), paths.tolist()
    stamps = [file_stamp(path) for path in names]
    digests = [_remembered(memo.get(path), stamp) for path, stamp in zip(names, stamps)]
    missing = [i for i, digest in enumerate(digests) if digest is None]
    served = len(paths) - len(missing)
    if progress is not None:
        progress("hash images", served, len(paths))
    for count, i in enumerate(missing, 1):
        digests[i] = file_hash(names[i])
        if progress is not None and (count % 1000 == 0 or count == len(missing)):
            progress("hash images", served + count, len(paths))
    fresh = {path: [*stamp, digest] for path, stamp, digest in zip(names, stamps, digests)}
    if fresh != memo:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memo_file, lambda fh: fh.write(json.dumps(fresh).encode()))
    return np.array(digests)


def _remembered(known: object, stamp: list[int]) -> str | None:
    """The memo's hash of a file whose stamp is still ``stamp``, else None (read the file)."""
    trusted = isinstance(known, list) and len(known) == len(stamp) + 1 and known[:-1] == stamp
    return known[-1] if trusted and isinstance(known[-1], str) else None


def intervened_image(path: str, pair_set: str, cfg: InterventionConfig):
    """The intervened version of the image at ``path`` as pair set ``pair_set`` (or an
    intervened validation set) makes it: the same op and seed, or the same re-render. For
    showing pairs (the dashboard's gallery); the embeddings never go through here."""
    if pair_set.startswith(("true:", "counterfactual:")):
        row = _factor_rows_of(Path(path).parents[2], [path])[0]  # <root>/<domain>/<class>/<image>
        change = pair_set.split(":", 1)[1]
        return _Counterfactuals([row], tuple(change.split("+")) if "+" in change else change, cfg.seed)[0]
    ops = dict(_image_interventions(cfg))
    op = ops.get(pair_set.removeprefix("val "))
    if op is None:
        raise InvalidInput(f"no image pair set {pair_set!r} in these interventions; "
                           f"available: {', '.join(ops) or '(none)'}")
    seed = int(_pair_seeds(cfg.seed, pair_set, np.array([file_hash(path)]))[0])
    return op(load_image(path), seed)


def _pair_seeds(seed: int, name: str, hashes: np.ndarray) -> np.ndarray:
    """Per-image seeds from the image content: an image gets the same op wherever it sits."""
    return np.array([seed_hash("pair", seed, name, h) for h in hashes], dtype=np.int64)


@dataclass(frozen=True)
class _Rows:
    """The embedded images, column by column (what every pair builder reads)."""

    paths: np.ndarray
    hashes: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    features: np.ndarray
    is_train: np.ndarray

    def pair_set(self, name: str, kind: str, rows: np.ndarray, z_do: np.ndarray) -> PairSet:
        return PairSet(name, kind, self.features[rows], z_do, self.domains[rows], self.labels[rows])


@dataclass(frozen=True)
class _Build:
    """What every pair builder reads: the embedder, the intervention config, the embedded rows,
    their ToyDomains factors (None where the world has none) and the class names."""

    embedder: _Embedder
    cfg: InterventionConfig
    rows: _Rows
    factor_rows: list[dict] | None
    class_names: list[str]
    folder: Path  # the data set's folder: paths in the user's image pairs files are relative to it
    skipped: list[tuple[str, str]] = field(default_factory=list)  # rows of the user's pairs files left out here


def _image_pair_set(b: _Build, name: str, op, picked: np.ndarray, kind: str) -> PairSet:
    what = {"pair set": name, "intervention": op.params(), "seed": b.cfg.seed}  # name: it seeds the pairs
    z_do = _intervened(b, name, b.rows.paths[picked], picked, what, op,
                       _pair_seeds(b.cfg.seed, name, b.rows.hashes[picked]))
    return b.rows.pair_set(name, kind, picked, z_do)


def _image_pairs(b: _Build) -> list[PairSet]:
    return [_image_pair_set(b, name, op, _pair_rows(b.rows.is_train, b.cfg.n_pairs, b.cfg.seed, name), "image")
            for name, op in _image_interventions(b.cfg)]


def _counterfactual_set(b: _Build, name: str, change, picked: np.ndarray, kind: str) -> PairSet:
    items = _Counterfactuals([b.factor_rows[i] for i in picked], change, b.cfg.seed)
    what = {"true swap": change, "seed": b.cfg.seed}
    return b.rows.pair_set(name, kind, picked, _intervened(b, name, items, picked, what))


def _intervened(b: _Build, name: str, items, picked: np.ndarray, what: dict, op=None, seeds=None) -> np.ndarray:
    """The intervened versions of rows ``picked`` (``items``: their files, with ``op`` applied, or
    re-renders), embedded. One that fails is an error naming its source image, never a silently
    zero row in a pair set: the files decoded a moment ago, so they changed under us, or a render broke."""
    z_do, failed = b.embedder.images(name, items, b.rows.hashes[picked], b.rows.domains[picked], what, op, seeds)
    if failed:
        raise ImageDecodeError(failed, b.rows.paths[picked])
    return z_do


def _true_pairs(b: _Build) -> list[PairSet]:
    return [_counterfactual_set(b, f"true:{change}", change,
                                _pair_rows(b.rows.is_train, b.cfg.n_pairs, b.cfg.seed, f"true:{change}"), "true")
            for change in b.cfg.true_swaps]


def _intervened_val_kinds(cfg: InterventionConfig, scan: DomainScan) -> tuple[str, ...]:
    if cfg.intervened_val is not None:
        return cfg.intervened_val
    own = ("pairs",) if cfg.image_pairs else ()
    if defaults.has_factors(scan.root):
        return ("counterfactual", *own)
    return ("image", *own) if cfg.image else own


def _intervened_val(b: _Build, kinds: tuple[str, ...]) -> list[PairSet]:
    """Every validation row, intervened on (kinds: see the module docstring). Only the scoring
    of a K/lam choice reads them; they never reach a fit (EmbeddingSet keeps them apart)."""
    cfg, rows = b.cfg, b.rows
    val = np.flatnonzero(~rows.is_train)
    if len(val) == 0:  # too few images per class to hold any out (e.g. --max-per-domain 8)
        return []
    out = []
    if "counterfactual" in kinds:
        name = "counterfactual:" + "+".join(COUNTERFACTUAL_CHANGE)
        out.append(_counterfactual_set(b, name, COUNTERFACTUAL_CHANGE, val, "intervened validation"))
    if "conflict" in kinds:
        out += _conflict_sets(b, val)
    if "image" in kinds:
        if not cfg.image:
            raise InvalidInput("intervened validation 'image' needs at least one image intervention")
        out += [_image_pair_set(b, f"val {name}", op, val, "intervened validation")
                for name, op in _image_interventions(cfg)]
    return out


class _Restyled:
    """ToyDomains rows re-rendered with given factor values (lazily, in the DataLoader workers)."""

    def __init__(self, rows: list[dict], changes: list[dict]) -> None:
        self.rows, self.changes = rows, changes

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from clip_icm.toydomains import Factors, render

        return render(replace(Factors.from_row(self.rows[i]), **self.changes[i]), int(self.rows[i]["image_size"]))


def _conflict_sets(b: _Build, val: np.ndarray) -> list[PairSet]:
    """Per held-out target: every validation row re-rendered with the usual colour and scene of
    one other class (drawn per row), that table read from the other domains' training rows."""
    cfg, rows, factor_rows = b.cfg, b.rows, b.factor_rows
    from clip_icm.toydomains import usual_looks

    classes = sorted({str(r["cls"]) for r in factor_rows})
    out = []
    for target in dict.fromkeys(rows.domains.tolist()):
        source_train = np.flatnonzero(rows.is_train & (rows.domains != target))
        looks = usual_looks([factor_rows[i] for i in source_train], classes)
        changes = []
        for i in val:
            others = [c for c in looks if c != factor_rows[i]["cls"]]
            partner = others[rng("conflict partner", cfg.seed, target, rows.hashes[i]).integers(len(others))]
            changes.append({"colour": looks[partner][0], "background": looks[partner][1]})
        name = f"conflict@{target}"
        what = {"intervened validation": name, "changes": changes, "seed": cfg.seed}
        z_do = _intervened(b, name, _Restyled([factor_rows[i] for i in val], changes), val, what)
        out.append(replace(rows.pair_set(name, "intervened validation", val, z_do), held_out=target))
    return out


def _look_prompts(b: _Build) -> dict[str, np.ndarray]:
    """Per held-out domain: (T, C, D) embeddings of toydomains.usual_look_prompts over the
    other domains' training rows (the held-out domain's rows and all labels of validation
    rows stay unread)."""
    embedder, rows, factor_rows, class_names = b.embedder, b.rows, b.factor_rows, b.class_names
    from clip_icm.toydomains import usual_look_prompts

    out = {}
    for target in dict.fromkeys(rows.domains.tolist()):
        source_train = np.flatnonzero(rows.is_train & (rows.domains != target))
        prompts = usual_look_prompts([factor_rows[i] for i in source_train], class_names)
        text = embedder.texts(f"usual-look prompts ({target} held out)", prompts, kind="embeddings")
        out[target] = text.reshape(len(prompts) // len(class_names), len(class_names), -1)
    return out


def _text_pairs(b: _Build) -> list[PairSet]:
    embedder, cfg, rows, class_names = b.embedder, b.cfg, b.rows, b.class_names
    if not cfg.text_banks:
        return []
    out = []
    for bank in resolve_banks(cfg.text_banks):
        texts, texts_do, classes = make_text_pairs(class_names, [bank], cfg.text_pairs_per_class, cfg.seed)
        words = np.array(text_pair_words(class_names, [bank], cfg.text_pairs_per_class, cfg.seed))
        both = embedder.texts(f"text:{bank.name}", texts + texts_do)
        out.append(PairSet(f"text:{bank.name}", "text", both[:len(texts)], both[len(texts):], labels=classes,
                           variant_words=words))
    if cfg.cross_modal:
        picked = _pair_rows(rows.is_train, cfg.n_pairs, cfg.seed, "cross-modal")
        texts_do = cross_modal_texts(rows.labels[picked], class_names, cfg.text_banks, cfg.seed)
        pairs = rows.pair_set("cross-modal", "cross-modal", picked, embedder.texts("cross-modal", texts_do))
        out.append(replace(pairs, variant_words=np.array(cross_modal_words(len(picked), cfg.text_banks, cfg.seed))))
    return out


def _caption_pairs(b: _Build, files: list[CaptionPairs]) -> list[PairSet]:
    """A text pair set per caption pairs file; a ``class`` cell names a class of the data set (its
    folder or its readable name), else its row is skipped; without a class column the pairs have
    no class labels (the open-class task then refuses them, as it cannot keep new classes out)."""
    out = []
    for own in files:
        keep, labels = _caption_classes(b, own)
        texts = [own.texts[i] for i in keep]
        texts_do = [own.texts_do[i] for i in keep]
        both = b.embedder.texts(own.name, texts + texts_do)
        words = np.array([variant_words(t, t_do) for t, t_do in zip(texts, texts_do)])
        out.append(PairSet(own.name, "text", both[:len(texts)], both[len(texts):], labels=labels, variant_words=words))
    return out


def _caption_classes(b: _Build, own: CaptionPairs) -> tuple[list[int], np.ndarray | None]:
    """The rows of ``own`` to keep and their class indices (None without a class column)."""
    if own.classes is None:
        return list(range(len(own.texts))), None
    index = {name: c for c, name in enumerate(b.class_names)}
    found = [index.get(readable_name(cell)) for cell in own.classes]
    keep = [i for i, c in enumerate(found) if c is not None]
    b.skipped.extend((f"{own.name}, pair {i + 1}", f"unknown class: {own.classes[i]!r} is not a class of the data set "
                      f"({', '.join(b.class_names)})") for i, c in enumerate(found) if c is None)
    if not keep:
        raise InvalidInput(f"caption pairs {own.name}: no pair names a class of the data set "
                           f"({', '.join(b.class_names)})")
    return keep, np.array([found[i] for i in keep], dtype=np.int64)


class _Placed(NamedTuple):
    """The pairs of one image pairs file placed in the data set: each pair's source row, and its
    intervened image: a row of the data set (``row_do`` >= 0) or a file outside it (``row_do`` -1)."""

    rows: np.ndarray
    row_do: np.ndarray
    paths_do: list[str]
    where: list[str]


def _own_image_pairs(b: _Build, files: list[ImagePairs], as_val: bool) -> tuple[list[PairSet], list[PairSet]]:
    """Per image pairs file: the pair set of the pairs whose first image is a training row, and
    (``as_val``) the intervened validation set of those whose first image is a validation row."""
    fit, val = [], []
    if not files:  # resolving every row's path took 0.15 s of the demo's first page
        return fit, val
    index = {str(Path(p).resolve()): i for i, p in enumerate(b.rows.paths.tolist())}
    for own in files:
        placed = _place(b, own, index)
        z_do, ok = _own_intervened(b, own, placed)
        train = ok & b.rows.is_train[placed.rows]
        if not train.any():
            raise InvalidInput(f"image pairs {own.name}: no usable pair starts at a training image of the data set "
                               f"({len(own.paths)} rows, {len(own.skipped) + int((~ok).sum())} skipped)")
        fit.append(_own_pair_set(b, own.name, "image", placed, z_do, train))
        held = ok & ~b.rows.is_train[placed.rows]
        if as_val and held.any():
            val.append(_own_pair_set(b, f"val {own.name}", "intervened validation", placed, z_do, held))
        elif held.any():
            b.skipped.extend((placed.where[i], "validation row: its first image is held out for validation, which "
                              "never shapes the projection") for i in np.flatnonzero(held))
    return fit, val


def _own_pair_set(b: _Build, name: str, kind: str, placed: _Placed, z_do: np.ndarray, keep: np.ndarray) -> PairSet:
    rows, row_do = placed.rows[keep], placed.row_do[keep]
    domains_do = np.where(row_do >= 0, b.rows.domains[np.maximum(row_do, 0)], b.rows.domains[rows])
    return replace(b.rows.pair_set(name, kind, rows, z_do[keep]), domains_do=domains_do)


def _place(b: _Build, own: ImagePairs, index: dict[str, int]) -> _Placed:
    """Each usable pair's rows; a path outside the data set's folder refuses the whole file (it
    was written for another folder, or to read files it should not); other problems skip a pair."""
    folder = b.folder.resolve()
    rows, row_do, paths_do, where = [], [], [], []
    for path, path_do, at in zip(own.paths, own.paths_do, own.where):
        first, second = (folder / path).resolve(), (folder / path_do).resolve()
        for given, resolved in ((path, first), (path_do, second)):
            if not resolved.is_relative_to(folder):
                raise InvalidInput(f"image pairs {own.name}: {at} names {given!r}, outside the data set's folder "
                                   f"{str(folder)!r}; paths must lie inside it")
        problem, i, j = _pair_problem(b, index, first, second, path_do)
        if problem:
            b.skipped.append((at, problem))
            continue
        rows.append(i)
        row_do.append(-1 if j is None else j)
        paths_do.append(str(second))
        where.append(at)
    return _Placed(np.array(rows, dtype=np.int64), np.array(row_do, dtype=np.int64), paths_do, where)


def _pair_problem(b: _Build, index: dict[str, int], first: Path, second: Path, path_do: str
                  ) -> tuple[str | None, int | None, int | None]:
    """(why the pair is skipped or None, its source row, its intervened image's row or None)."""
    i, j = index.get(str(first)), index.get(str(second))
    if i is None:
        return ("not in the data set: its first image is none of the data set's readable images (its domain and "
                "class would be unknown)"), None, None
    if first == second:
        return "not a pair: path and path_do are the same file", None, None
    if j is None:
        reason = image_file_problem(second, b.folder.resolve())
        return (f"{reason} ({path_do})" if reason else None), i, None
    if b.rows.labels[i] != b.rows.labels[j]:
        return "different classes: an intervention keeps the class, these two images are labelled apart", None, None
    if b.rows.is_train[i] and not b.rows.is_train[j]:
        return ("validation row: its intervened image is held out for validation, which never shapes the "
                "projection"), None, None
    return None, i, j


def _own_intervened(b: _Build, own: ImagePairs, placed: _Placed) -> tuple[np.ndarray, np.ndarray]:
    """The intervened images' embeddings (a data set image's own row; any other file embedded as
    it is, through the store) and which pairs survived (a file that fails to decode is skipped)."""
    z_do = b.rows.features[np.maximum(placed.row_do, 0)].copy()
    ok = np.ones(len(placed.rows), dtype=bool)
    outside = np.flatnonzero(placed.row_do < 0)
    if len(outside):
        paths = np.array([placed.paths_do[i] for i in outside])
        hashes = np.array([file_hash(p) for p in paths])
        vectors, failed = b.embedder.images(own.name, paths, hashes, b.rows.domains[placed.rows[outside]])
        z_do[outside] = vectors
        for k, why in failed.items():
            ok[outside[k]] = False
            b.skipped.append((placed.where[outside[k]], f"unreadable image: {why} ({paths[k]})"))
    return z_do, ok


def _released_class_text(embedder: _Embedder, folders: Sequence[str], class_names: list[str]) -> np.ndarray | None:
    """The released zero-shot prompts ("a photo of a {}." with only ``_`` replaced in the folder
    name), embedded, when they differ from ours (which also lower-case and drop hyphens)."""
    released = [DEFAULT_TEMPLATE.format(released_name(f)) for f in folders]
    if released == [DEFAULT_TEMPLATE.format(c) for c in class_names]:
        return None
    return embedder.texts("released class prompts", released, kind="embeddings")[None]


def _attribute_prompts(b: _Build) -> PromptSet | None:
    """Each class under each bank template (Orth-Cali's pairs), embedded; None without banks."""
    if not b.cfg.text_banks:
        return None
    texts, labels, groups, words = attribute_prompts(b.class_names, resolve_banks(b.cfg.text_banks))
    return PromptSet(np.array(texts), b.embedder.texts("attribute prompts", texts), np.array(words),
                     np.array(labels, dtype=np.int64), np.array(groups))


def _spurious(b: _Build) -> PromptSet | None:
    """The banks' class-free prompts (Orth-Cali's spurious prompts), embedded; None without banks."""
    if not b.cfg.text_banks:
        return None
    texts, words = spurious_prompts(resolve_banks(b.cfg.text_banks))
    return PromptSet(np.array(texts), b.embedder.texts("spurious prompts", texts), np.array(words))
