"""Command line: ``python -m clip_icm <command>``.

Each command is one ``_add_<name>_parser(subparsers)`` that registers its flags and
sets ``run=_run_<name>``; adding a command is adding its pair of functions and
listing the first in :data:`PARSERS`. Bad input ends in one line on stderr and a
non-zero exit code, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import sys
import time
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Callable

from clip_icm import defaults
from clip_icm.errors import InvalidInput, UserError, check_names

if TYPE_CHECKING:  # pandas costs half a second to import: --help must not pay it
    import pandas as pd


def _say(text: object, file=None) -> None:
    """``print``, with control characters shown as escapes (``\\x1b``): a folder name carrying a
    terminal escape sequence (colours, a cleared screen, a hyperlink) is printed as data."""
    shown = "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in str(text))
    print(shown, file=sys.stdout if file is None else file)


class UsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit, so main can answer in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: error: {message} (see: {self.prog} --help)")


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


# ---------------------------------------------------------------- playground


def _add_playground_parser(subparsers: argparse._SubParsersAction) -> None:
    from clip_icm.scm import SCMConfig

    d = SCMConfig()
    p = subparsers.add_parser(
        "playground",
        help="the causal playground: a linear SCM where the invariant subspace is known",
        description="Fit ICM on true interventions in a linear SCM and show, as the test-time shift grows, "
        "ID/OOD accuracy, subspace recovery (largest principal angle) and R^2 of the factors.",
    )
    p.add_argument("--n-invariant", metavar="N", type=int, default=d.n_invariant,
                   help="invariant factors (default %(default)s)")
    p.add_argument("--n-variant", metavar="N", type=int, default=d.n_variant,
                   help="variant factors (default %(default)s)")
    p.add_argument("--dim", metavar="D", type=int, default=None,
                   help="embedding dimension (default n-invariant + n-variant)")
    p.add_argument("--classes", metavar="N", type=int, default=d.n_classes,
                   help="number of classes (default %(default)s)")
    p.add_argument("--spurious", metavar="P", type=float, default=d.spurious_correlation,
                   help="P(variant factors follow the class) in training (default %(default)s)")
    p.add_argument("--noise", metavar="STD", type=float, default=d.noise,
                   help="observation noise std (default %(default)s)")
    p.add_argument("--condition", metavar="KAPPA", type=float, default=d.mixing_condition,
                   help="condition number of the mixing (default %(default)s)")
    p.add_argument("--shifts", metavar="LIST", type=_float_list, default=defaults.PLAYGROUND_SHIFTS,
                   help="comma-separated test-time shifts in [0, 1] (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--lam", type=float, default=defaults.PLAYGROUND_LAM,
                   help="ICM lambda, absolute (default %(default)g)")
    p.add_argument("--k", type=int, default=None, help="ICM dimension K (default: the true n-invariant)")
    p.add_argument("--n-train", metavar="N", type=int, default=defaults.PLAYGROUND_N_TRAIN,
                   help="training samples = pairs (default %(default)s)")
    p.add_argument("--n-test", metavar="N", type=int, default=defaults.PLAYGROUND_N_TEST,
                   help="samples per test set (default %(default)s)")
    p.add_argument("--seed", metavar="N", type=int, default=d.seed,
                   help="seed of the world and the samples (default %(default)s)")
    p.add_argument("--csv", metavar="FILE", default=None, help="also write the table to this CSV file")
    p.set_defaults(run=_run_playground)


def _run_playground(args: argparse.Namespace) -> int:
    from clip_icm.scm import SCMConfig, run_playground

    config = SCMConfig(
        n_invariant=args.n_invariant, n_variant=args.n_variant, dim=args.dim, n_classes=args.classes,
        spurious_correlation=args.spurious, noise=args.noise, mixing_condition=args.condition, seed=args.seed,
    )
    table = run_playground(config, args.shifts, args.n_train, args.n_test, args.lam, args.k)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(_playground_text(table, config, args))
    return 0


def _playground_text(table: pd.DataFrame, config, args: argparse.Namespace) -> str:
    import pandas as pd

    from clip_icm.methods import label

    shown = table.assign(method=table.method.map(label)).rename(columns={
        "id_accuracy": "ID acc", "ood_accuracy": "OOD acc", "ood_gap": "OOD gap",
        "max_angle": "max angle (rad)", "r2_inv": "R2 z_inv", "r2_var": "R2 z_var",
    })
    k = config.n_invariant if args.k is None else args.k
    header = (
        f"Linear SCM: {config.n_invariant} invariant + {config.n_variant} variant factors -> "
        f"D={config.embedding_dim}, {config.n_classes} classes, spurious {config.spurious_correlation}, "
        f"noise {config.noise}, seed {config.seed}; ICM K={k}, lam={args.lam:g}"
    )
    last = table[table["shift"] == table["shift"].max()].set_index("method")["ood_gap"]
    summary = f"OOD gap at shift {table['shift'].max():g}: " + ", ".join(
        f"{label(m)} {gap:+.3f}" for m, gap in last.items()
    )
    body = shown.to_string(
        index=False, na_rep="-", float_format=lambda v: f"{v:.3f}",
        formatters={"max angle (rad)": lambda v: "-" if pd.isna(v) else f"{v:.1e}"},
    )
    return "\n".join([header, "", body, "", summary])


# ---------------------------------------------------------------- embed / evaluate
# evaluation.SCORINGS' names, written here so that --help does not import the maths (a test pins them).
SCORING_NAMES = ("source_val", "source_domains", "interventional")
TASK_NAMES = ("domain_shift", "open_class")  # evaluation.TASKS, likewise
# Shared flags: which images, which model, which interventional pairs, where the cache is.

def _csv_names(text: str) -> tuple[str, ...]:
    """Comma-separated names; "none" (or empty) is the empty tuple."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return () if names in ((), ("none",)) else names


def _add_source_args(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data (default: the bundled ToyDomains demo, generated on first use)")
    data.add_argument("--root", metavar="DIR", default=None,
                      help="DomainBed-layout folder: <root>/<domain>/<class>/<image>, or a folder holding <dataset>/; "
                      "or a manifest FILE (.csv, .jsonl, .parquet) with the columns path, label, domain (paths "
                      "relative to its folder)")
    data.add_argument("--dataset", metavar="NAME", default=None,
                      help="PACS, VLCS, OfficeHome, TerraIncognita or DomainNet under --root")
    data.add_argument("--max-per-domain", metavar="N", type=int, default=None,
                      help="at most N images per domain (a quick look)")
    data.add_argument("--val-fraction", metavar="F", type=float, default=0.2,
                      help="per-domain validation split (default %(default)s; evaluate and export need it above 0: "
                      "the probe's C, K and lam and the model are chosen on it)")
    data.add_argument("--seed", metavar="N", type=int, default=0,
                      help="seed of the split and subsampling (default %(default)s)")
    model = p.add_argument_group("model (default: toy-clip, the tiny CLIP trained on ToyDomains)")
    model.add_argument("--model", metavar="NAME", default="toy-clip",
                       help="toy-clip, an open_clip architecture (e.g. ViT-B-16-quickgelu, ViT-B-32), "
                       "hf-hub:org/repo or local-dir:/folder")
    model.add_argument("--pretrained", metavar="TAG", default=None,
                       help="open_clip tag (openai, laion2b_s34b_b79k, ...), a checkpoint file, or 'none' for random "
                       "weights. Weights are never downloaded when offline: put them in $HF_HUB_CACHE")
    model.add_argument("--device", metavar="DEVICE", default="auto",
                       help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    model.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                       help="auto = bf16/fp16 autocast on GPU, fp32 on CPU")
    model.add_argument("--batch-size", metavar="N", type=int, default=64,
                       help="images per forward pass (default %(default)s)")
    model.add_argument("--workers", metavar="N", type=int, default=None,
                       help="decode worker processes (default: spare cores)")
    pairs = p.add_argument_group("interventional pairs")
    pairs.add_argument("--interventions", metavar="LIST", type=_csv_names, default=None,
                       help="image ops, comma-separated, or 'none' (default: all seven: "
                       f"{', '.join(defaults.IMAGE_OPS)}; one drawn at random per pair)")
    pairs.add_argument("--per-op", action="store_true",
                       help="one pair set per image op instead of a random op per pair")
    pairs.add_argument("--text-banks", metavar="LIST", type=_csv_names, default=None,
                       help="prompt template banks (styles, contexts, conditions) or 'none' (default styles,contexts)")
    pairs.add_argument("--true-swaps", metavar="LIST", type=_csv_names, default=None,
                       help="ToyDomains only: true pairs re-rendered with another colour, background and/or style "
                       "(names: colour, background, style; default colour,background where the folder has the "
                       "generator's factors.csv (or a manifest with its columns), as the demo does; none elsewhere)")
    pairs.add_argument("--text-pairs", metavar="FILE", action="append", default=[],
                       help="your own caption pairs: a CSV or JSONL file with the columns caption, caption_do and "
                       "optionally class; the pair set captions:<file name>. Repeat for several files")
    pairs.add_argument("--image-pairs", metavar="FILE", action="append", default=[],
                       help="your own image pairs: a CSV, JSONL or Parquet file with the columns path, path_do, "
                       "relative to the data set's folder; the pair set image-pairs:<file name>. Repeat for several")
    pairs.add_argument("--cross-modal", action="store_true",
                       help="also pair each image with a variant prompt (mixes in CLIP's modality gap)")
    pairs.add_argument("--n-pairs", metavar="N", type=int, default=None,
                       help="image pairs per set (default: one per training image)")
    pairs.add_argument("--templates", metavar="NAME", default="ensemble",
                       help="zero-shot prompt set: single or ensemble (default)")
    pairs.add_argument("--intervened-val", metavar="LIST", type=_csv_names, default=None,
                       help="intervened validation rows for --select interventional (scored, never fitted): "
                       "counterfactual (ToyDomains: colour and scene re-drawn), conflict (ToyDomains: another "
                       "class's usual colour and scene), image (the image interventions), pairs (the --image-pairs "
                       "whose first image is a validation row), or 'none' (default: counterfactual where the folder "
                       "has factors.csv, else image; and pairs with --image-pairs)")
    pairs.add_argument("--prompts", default="classes", choices=("classes", "usual_look"),
                       help="zero-shot prompts: the class names (default), or ToyDomains only: each class named "
                       "with its usual colour and scene in the source training rows")
    _add_cache_folder_arg(p)
    p.add_argument("--cache-max-size", metavar="SIZE", type=_size, default=None,
                   help="keep the cache's entries under SIZE (e.g. 2GB), removing the least recently used first "
                        "(default $CLIP_ICM_CACHE_MAX_SIZE, else no bound)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_cache_folder_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="cache folder (default $CLIP_ICM_CACHE, else clip-icm in the user cache, "
                        "e.g. ~/.cache/clip-icm); see: python -m clip_icm cache info")


def _size(text: str) -> int:
    from clip_icm.cache import parse_size

    try:
        return parse_size(text)
    except InvalidInput as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _age(text: str) -> float:
    from clip_icm.cache import parse_age

    try:
        return parse_age(text)
    except InvalidInput as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _configs(args: argparse.Namespace):
    from clip_icm.backend import ModelConfig
    from clip_icm.datasets import is_manifest
    from clip_icm.pipeline import DataConfig, InterventionConfig

    for flag in ("max_per_domain", "batch_size", "n_pairs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InvalidInput(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    manifest = args.root is not None and is_manifest(args.root)
    if args.root is not None and not manifest and not os.path.isdir(args.root):
        raise InvalidInput(f"--root {args.root!r} is not a folder, nor a manifest (.csv, .jsonl, .parquet)")
    if args.dataset is not None and args.root is None:  # else the demo would be evaluated under its name
        raise InvalidInput(f"--dataset {args.dataset} needs --root, the folder that holds it")
    if args.dataset is not None and manifest:
        raise InvalidInput(f"--dataset {args.dataset} names a folder under --root; a manifest lists its images itself")
    if not 0.0 <= args.val_fraction < 1.0:
        raise InvalidInput(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    data = DataConfig(args.root, args.dataset, args.max_per_domain, args.val_fraction, args.seed)
    model = ModelConfig(args.model, args.pretrained, args.device, args.precision, args.batch_size, args.workers)
    with_factors = defaults.has_factors(args.root, args.dataset)
    pairs = InterventionConfig(
        image=defaults.IMAGE_OPS if args.interventions is None else args.interventions, random_choice=not args.per_op,
        text_banks=defaults.TEXT_BANKS if args.text_banks is None else args.text_banks,
        true_swaps=defaults.true_swaps(with_factors) if args.true_swaps is None else args.true_swaps,
        cross_modal=args.cross_modal, n_pairs=args.n_pairs, templates=args.templates,
        look_prompts=defaults.look_prompts(with_factors) or args.prompts == "usual_look", seed=args.seed,
        intervened_val=args.intervened_val, text_pairs=tuple(args.text_pairs), image_pairs=tuple(args.image_pairs),
    )
    return data, model, pairs


def _on_demo(args: argparse.Namespace) -> bool:
    return args.root is None


class _Bars:
    """tqdm progress bars on stderr, one per pipeline stage. A stage's first report counts the items
    served from the cache (pipeline.Progress): they are said to be so, and the rate and time left
    count only the items computed after them (a stage served whole once printed 300,000 it/s)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.stage, self.bar = enabled, None, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage, self.bar = stage, _stage_bar(stage, done, total)
            return
        self.bar.n = done
        self.bar.refresh()  # refresh, not update: the rate stays (n - initial) / elapsed

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.stage, self.bar = None, None


def _stage_bar(stage: str, served: int, total: int):
    """A stage's bar, opened at its first report: ``served`` items came from the cache."""
    from tqdm import tqdm

    if total and served >= total:  # nothing to compute: a count, no rate, no time left
        return tqdm(total=total, initial=served, desc=f"{stage}: served from cache ({total:,} items)",
                    bar_format="{desc}", file=sys.stderr, leave=False)
    desc = f"{stage} ({served} served from cache)" if served else stage
    return tqdm(total=total, initial=served, desc=desc, file=sys.stderr, unit="item", leave=False)


def _embed(args: argparse.Namespace, configs: tuple, check_target: str | None = None):
    """Scan (checking the target domain before any embedding), then embed ``configs`` (the
    data, model and intervention configs of :func:`_configs`) through the store."""
    from clip_icm.store import EmbeddingStore

    engine = _engine(args)  # a missing extra fails before the scan
    store = EmbeddingStore(args.cache, max_size=args.cache_max_size)
    _check_cache_writable(store.root)
    with _full_cache_is_one_line(store.root):
        return _scan_and_embed(args, configs, store, check_target, engine)


def _scan_and_embed(args: argparse.Namespace, configs: tuple, store, check_target: str | None, engine=None):
    from clip_icm import background
    from clip_icm.backend import model_key
    from clip_icm.pipeline import DEMO_DRAW_WAIT_S, embed_dataset, start_drawing_missing_demo

    data, model, pairs = configs
    drawing = start_drawing_missing_demo(data)  # while the model resolves
    model_key(model, store.root / "models")  # an unknown model or missing weights fail here, before the scan
    background.wait(drawing, DEMO_DRAW_WAIT_S)  # should it fail, the scan draws the world here or says why not
    scan = _scan_quietly(data)
    if check_target not in (None, "all") and check_target not in scan.domain_names:
        raise InvalidInput(f"unknown domain {check_target!r}; domains: {', '.join(scan.domain_names)}")
    bars = _Bars(not args.quiet)
    try:
        return embed_dataset(data, model, pairs, store, bars, scan=scan, engine=engine)
    finally:
        bars.close()


def _engine(args: argparse.Namespace):
    """What encodes the missing chunks: None (this process) or Ray (embed --engine ray)."""
    if getattr(args, "engine", "local") == "local":  # evaluate and export embed here
        if getattr(args, "address", None):
            raise InvalidInput("--address is for --engine ray")
        return None
    import functools

    from clip_icm.distributed import RayEncoder, ray_available

    ray_available()
    return functools.partial(RayEncoder, address=args.address)


@contextlib.contextmanager
def _full_cache_is_one_line(root):
    """A full disk (or quota) as one line naming the cache: only writes fail so, and the cache
    (its entries and memos) is all that embedding writes; every finished chunk is kept."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise InvalidInput(f"the cache folder {str(root)!r} is full ({err.strerror}); free some space "
                           "and run again to resume, or give another folder with --cache DIR") from None


def _check_cache_writable(root) -> None:
    """A cache folder that cannot be created or written fails here, in one line, before the scan
    and the model (a write probe: ``os.access`` says yes on a read-only mount)."""
    import tempfile

    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        raise InvalidInput(f"the cache folder {str(root)!r} is not writable ({err.strerror}); give another with "
                           "--cache DIR or $CLIP_ICM_CACHE") from None


def _scan_quietly(data):
    """The folder scan, its warnings (a domain lacking a class, ...) as one line each."""
    from clip_icm.pipeline import scan_data

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = scan_data(data)
    for warning in caught:
        _say(f"warning: {warning.message}", file=sys.stderr)
    return scan


def _warn_once_per_kind(caught: list) -> None:
    """One line per kind of warning: each fit of a small folder repeats the same one."""
    by_kind: dict[str, list] = {}
    for w in caught:
        by_kind.setdefault(w.category.__name__, []).append(w.message)
    for messages in by_kind.values():
        times = f" ({len(messages)} times, e.g. this one)" if len(messages) > 1 else ""
        _say(f"warning: {messages[0]}{times}", file=sys.stderr)


def _skipped_text(skipped: list[tuple[str, str]], limit: int = 20) -> str:
    if not skipped:
        return "Skipped files: none"
    counts = Counter(reason.split(":")[0] for _, reason in skipped)
    lines = [f"Skipped files: {len(skipped)} (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"]
    lines += [f"  {path}: {reason}" for path, reason in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more (all of them are in the --out JSON)")
    return "\n".join(lines)


def _say_notes(run, limit: int = 5) -> None:
    """The kept rows of the user's pairs files worth a look, one line each (at most ``limit``)."""
    for note in run.notes[:limit]:
        _say(f"warning: {note}", file=sys.stderr)
    if len(run.notes) > limit:
        _say(f"warning: ... and {len(run.notes) - limit} more such pairs", file=sys.stderr)


def _run_summary(run, seconds: float) -> str:
    emb = run.embeddings
    counts = ", ".join(f"{d} {int((emb.domains == d).sum())}" for d in emb.domain_names)
    pairs = ", ".join(f"{p.name} ({len(p.z)})" for p in emb.pairs) or "none"
    source = "all from the cache, model not loaded" if not run.model_loaded else "model loaded"
    return "\n".join([
        f"Data: {run.scan.root}: {len(emb.labels)} images, {len(emb.class_names)} classes; per domain: {counts}",
        f"Embeddings: D={emb.features.shape[1]}; pair sets: {pairs}",
        f"Cache: {run.computed} entries computed, {run.reused} reused ({source}){_evicted_text(run)}; "
        f"{seconds:.1f} s",
    ])


def _evicted_text(run) -> str:
    if not run.evicted:
        return ""
    return f", {run.evicted} least recently used removed to stay under the size bound"


def _add_embed_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed", help="embed a DomainBed-layout folder (and its interventional pairs) into the cache",
        # Raw formatting keeps the examples' lines, so the description carries its own line breaks.
        description="Embed every image of a DomainBed-layout folder, its interventional pairs and the class\n"
        "prompts, and store them in the embedding cache. Interrupted runs resume where they stopped;\n"
        "a second run reads everything from the cache without loading the model.",
        epilog="examples:\n  python -m clip_icm embed\n"
        "  python -m clip_icm embed --root ~/data --dataset PACS --model ViT-B-16-quickgelu --pretrained openai\n"
        "  python -m clip_icm embed --root ./my_folder --model ViT-B-32 --pretrained none --device cpu",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_args(p)
    _add_engine_args(p)
    p.set_defaults(run=_run_embed)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    engine = p.add_argument_group("engine")
    engine.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local (default): this process and its decode workers; ray: Ray Data, decoding in "
                        "CPU tasks and encoding on actors (a GPU each where the cluster has them), the same "
                        "cache entries (needs the [distributed] extra)")
    engine.add_argument("--address", metavar="ADDR", default=None,
                        help="with --engine ray: the cluster to join (e.g. ray://head:10001 or auto; default: "
                        "a local Ray started here)")


def _run_embed(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    run = _embed(args, _configs(args))
    _say(_run_summary(run, time.perf_counter() - start))
    _say(_skipped_text(run.skipped))
    _say_notes(run)
    return 0


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    from clip_icm.methods import ALL_METHODS

    p = subparsers.add_parser(
        "evaluate", help="leave-one-domain-out accuracy: CLIP vs ICM vs baselines, per domain",
        description="For each target domain: fit the projections on the other domains' interventional pairs,\n"
        "train the linear probe on their training split (C chosen on their validation split), and score\n"
        "the whole target domain. Prints target-domain accuracy for CLIP and ICM, zero-shot and linear\n"
        "probe, and the baselines; embeds first (through the cache) when needed.",
        epilog="examples:\n  python -m clip_icm evaluate\n"
        "  python -m clip_icm evaluate --root ~/data --dataset PACS --model ViT-B-16-quickgelu \\\n"
        "      --pretrained openai --target sketch --k 256 --lam 1000 --lam-mode absolute --out pacs.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_args(p)
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--target", metavar="DOMAIN", default="all",
                    help="held-out domain, or 'all' for each in turn (default)")
    ev.add_argument("--k", type=int, default=None, help="invariant dimension K (default min(64, D/2))")
    # Relative by default: the useful absolute lam depends on ||Delta|| / ||Z||, which differs per
    # model and intervention (on toy-clip the released default of 1000 erases the classes).
    ev.add_argument("--lam", type=float, default=None,
                    help="intervention weight lambda (default 1, relative; 1000, absolute, with --protocol released)")
    ev.add_argument("--lam-mode", default=None, choices=("absolute", "relative"),
                    help="relative (default): lam x tr(Z'Z)/tr(Delta'Delta), so 1 weighs both terms equally; "
                         "absolute: the released code's scale (it used 1000; the released protocol's only mode)")

    ev.add_argument("--methods", metavar="LIST", type=_csv_names, default=None,
                    help=f"methods, comma-separated: {', '.join(ALL_METHODS)} (default all)")
    ev.add_argument("--pair-sets", metavar="LIST", type=_csv_names, default=None,
                    help="pair sets used to fit, e.g. image:random,text:styles (default: true:colour,true:background "
                    "on the demo, all built elsewhere)")
    ev.add_argument("--select", default=None, choices=("none", *SCORING_NAMES),
                    help="choose K and lam per target on source data only: source_val, source_domains (leave one "
                    "source domain out) or interventional (validation + intervened validation); none = --k/--lam "
                    "(default: interventional, on every data set; none where --k or --lam is typed, under --protocol "
                    "released and for --task open_class)")
    ev.add_argument("--choice", default=defaults.CHOICE, choices=defaults.CHOICE_MODES,
                    help="what the model to deploy per target is chosen on, never a target label: source-only "
                    "(default) reads no target image; unlabelled-target also reads how sure each candidate is on the "
                    "target's images (better on the worlds it was developed on, not on fresh ones: docs/CHOICE.md)")
    ev.add_argument("--select-for", default="probe", choices=("probe", "zero-shot"),
                    help="which predictor the selection rule scores (default %(default)s)")
    ev.add_argument("--protocol", metavar="NAME", default="ours",
                    help="ours (default) or released: the released code's pipeline (image pairs only, the one "
                    "prompt 'a photo of a {}.', absolute lam, LogisticRegression(C=0.316) on raw projected features, "
                    "the target's 20%% holdout, fp32 forward passes and fp32 arithmetic, class names with only '_' "
                    "replaced, the first half of the classes as base classes in --task open_class; K and lam fixed "
                    "unless --select)")
    ev.add_argument("--task", metavar="NAME", default="domain_shift",
                    help="domain_shift (default) or open_class: a seeded 50/50 class split (--seed), fits on the "
                    "base classes of the source domains, zero-shot base / new / harmonic-mean accuracy at the "
                    "fixed --k / --lam")
    ev.add_argument("--keep-target-styles", action="store_true",
                    help="keep the text prompts that name the held-out domain (default: dropped from every fit, "
                    "since they are prior knowledge of the target's shift)")
    ev.add_argument("--orth-cali-lam", metavar="LAM", type=float, default=defaults.ORTH_CALI_LAM,
                    help="Orth-Cali's own lambda (default %(default)g, as published)")
    ev.add_argument("--orth-cali-queries", default="one", choices=("one", "ensemble"),
                    help="Orth-Cali's zero-shot query: one prompt per class, 'a photo of a {}.' (default, as "
                    "debias_vl), or the ensemble of --templates")
    ev.add_argument("--out", metavar="FILE", default=None, help="write the tidy rows to a .csv or .json file")
    p.set_defaults(run=_run_evaluate)


def _methods(args: argparse.Namespace) -> tuple[str, ...]:
    from clip_icm.methods import ALL_METHODS, METHODS

    methods = ALL_METHODS if args.methods is None else args.methods
    METHODS.check(methods)
    return tuple(methods)


def _eval_config(args: argparse.Namespace, dim: int, methods: tuple[str, ...]):
    from clip_icm.evaluation import EvalConfig

    k = defaults.k(dim) if args.k is None else args.k
    if not 1 <= k <= dim:
        raise InvalidInput(f"--k must be between 1 and the embedding dimension {dim}, got {k}")
    pair_sets = args.pair_sets
    # The demo's true-swap default is ours; the released protocol fits on the image pairs instead.
    # The user's own pairs files join it: they were given to be fitted on.
    if pair_sets is None and _on_demo(args) and args.true_swaps is None and args.protocol == "ours":
        pair_sets = defaults.DEMO_PAIR_SETS + tuple(_own_pair_set_names(args))
    return EvalConfig(n_components=k, lam=args.lam, lam_mode=args.lam_mode, methods=methods,
                      pair_sets=pair_sets, prompts=args.prompts, seed=args.seed, protocol=args.protocol,
                      orth_cali_lam=args.orth_cali_lam, keep_target_styles=args.keep_target_styles,
                      orth_cali_queries=args.orth_cali_queries)


def _protocol_args(args: argparse.Namespace):
    """Check --protocol / --task and fill what the protocol fixes (lam scale, precision) into args."""
    from clip_icm.protocols import PROTOCOLS

    spec = PROTOCOLS.get(args.protocol)  # UnknownName listing the valid names
    args.set_by_hand = args.k is not None or args.lam is not None  # before the lam the protocol fixes fills in
    check_names("task", (args.task,), TASK_NAMES)
    if args.task == "open_class" and args.select not in (None, "none"):
        raise InvalidInput("--task open_class evaluates at the fixed --k / --lam; drop --select")
    if spec.lam_mode is not None and args.lam_mode not in (None, spec.lam_mode):
        raise InvalidInput(f"--protocol {spec.name} uses a {spec.lam_mode} lam; drop --lam-mode {args.lam_mode}")
    if spec.precision is not None and args.precision not in ("auto", spec.precision):
        raise InvalidInput(f"--protocol {spec.name} runs {spec.precision} forward passes; drop --precision "
                           f"{args.precision}")
    # Ours: relative lam 1 by default (the useful absolute lam depends on ||Delta|| / ||Z||, see --lam).
    args.lam_mode = args.lam_mode or spec.lam_mode or defaults.LAM_MODE
    args.lam = args.lam if args.lam is not None else (spec.lam or defaults.LAM)
    args.precision = spec.precision or args.precision
    return spec




def _selection(args: argparse.Namespace) -> str | None:
    """The selection rule's name, or None for the fixed --k / --lam."""
    # The source-only rule is every data set's default under our protocol; the released protocol
    # fixes K and lam, as its code does, and the open-class task evaluates at the fixed ones.
    # A --k or --lam typed by hand is a fixed setting unless --select asks for the rule.
    ours = args.protocol == "ours" and args.task == "domain_shift" and not args.set_by_hand
    default = defaults.SELECTION if ours else "none"
    rule = args.select if args.select is not None else default
    return None if rule == "none" else rule


def _accuracy_table(frame: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    """Target-domain accuracy: one row per held-out domain (its K and lam), columns (method, protocol);
    a target whose split failed is a row of NaN (printed as "failed"), left out of the mean."""
    from clip_icm.evaluation import LINEAR_PROBE
    from clip_icm.methods import label as method_label

    rows = frame[frame.role == "target"].copy()
    rows["method"] = rows.method.map(method_label)
    rows["protocol"] = rows.protocol.map(lambda p: "probe" if p == LINEAR_PROBE else p)
    order = list(dict.fromkeys(zip(rows.method, rows.protocol)))
    table = rows.pivot_table(index="domain", columns=["method", "protocol"], values="accuracy", sort=False,
                             dropna=False)[order]  # dropna=False keeps Orth-Cali's n/a probe column
    first = rows.groupby("domain", sort=False).first()
    table.insert(0, ("", "n"), first.n)
    table.insert(1, ("", "K"), first.K.astype(str))
    table.insert(2, ("", "lam"), first.lam.map(lambda v: f"{v:g}"))
    table = table.reindex(targets)
    table.index.name = "target"
    if table[("", "n")].notna().sum() > 1:
        table.loc["mean"] = table.mean(numeric_only=True)
        table.loc["mean", ("", "n")] = table[("", "n")].iloc[:-1].sum()
        table.loc["mean", [("", "K"), ("", "lam")]] = ""
    return table


def _table_text(table: pd.DataFrame) -> str:
    import pandas as pd

    from clip_icm.methods import SPECS

    # n is a count: pivoting made it a float, and 18.000 images reads as a measurement.
    n_column = {("", "n"): lambda v: "failed" if pd.isna(v) else str(int(v))}
    table = table.copy()
    for column in [(spec.label, "probe") for spec in SPECS if spec.text_only]:
        if column in table.columns:  # a text-only method (Orth-Cali) has no probe: n/a, not a failure
            table[column] = "n/a"  # (to_string's na_rep would win over a formatter)
    return table.to_string(float_format=lambda v: f"{v:.3f}", na_rep="failed", formatters=n_column)


def _evaluate_header(args: argparse.Namespace, spec, config) -> str:
    open_class = args.task == "open_class"
    # The released open-class test is the whole target too (its base classes' in + out splits).
    rows = "the target's 20% holdout" if spec.target_rows == "holdout" and not open_class else "whole target domain"
    probe = ("no probe" if open_class else "LogisticRegression(C=0.316) on raw projected features"
             if spec.probe == "released" else "probe C chosen on source validation rows")
    split = (("the first half of the sorted classes as base" if spec.class_split == "first_half"
              else f"class split seed {args.seed}") + "; ") if open_class else ""
    task = "Open-class (zero-shot, base / new classes)" if open_class else "Leave-one-domain-out"
    styles = "kept" if config.keep_target_styles else "dropped"
    return (f"{task}, target accuracy ({rows}); protocol: {spec.label}; {split}{probe}; prompts naming the target: "
            f"{styles}; Orth-Cali lam={config.orth_cali_lam:g}, zero-shot only (probe n/a)")


def _open_class_table(frame: pd.DataFrame, spec) -> pd.DataFrame:
    """Open-class: one row per held-out domain, columns (method, base / new / harmonic mean)."""
    from clip_icm.methods import label as method_label

    rows = frame[frame.role == "target"].copy()
    rows["method"] = rows.method.map(method_label)
    rows["classes"] = rows.classes.replace({"harmonic mean": "HM"})
    order = list(dict.fromkeys(zip(rows.method, rows.classes)))
    table = rows.pivot_table(index="domain", columns=["method", "classes"], values="accuracy", sort=False,
                             dropna=False)[order]
    table.index.name = f"target [protocol: {spec.label}]"
    if len(table) > 1:
        table.loc["mean"] = table.mean(numeric_only=True)
    return table


def _write_results(path: str, frame: pd.DataFrame, run, config, failed: dict[str, str]) -> None:
    """Replace ``path`` with every row so far (atomically: a reader or a crash never sees half a file)."""
    from dataclasses import asdict

    if path.lower().endswith(".json"):
        payload = {"config": asdict(config), "embedding_key": run.embeddings.key,
                   "rows": frame.to_dict("records"), "failed": failed, "skipped": [list(s) for s in run.skipped]}
        data = json.dumps(payload, indent=1, default=str).encode()
    else:  # .csv: _check_evaluate_args checked the suffix before embedding
        data = frame.to_csv(index=False).encode()
    _write_out(path, data)


def _write_out(path: str, data: bytes) -> None:
    """``data`` to --out ``path``, atomically (a reader never sees half a file)."""
    from pathlib import Path

    from clip_icm.store import atomic_write

    try:
        atomic_write(Path(path), lambda fh: fh.write(data))
    except OSError as err:  # its filename would be the temp file's: name the one the user gave
        raise InvalidInput(f"--out {path!r} could not be written ({err.strerror or err})") from None


def _checked_configs(args: argparse.Namespace, pick_methods) -> tuple[tuple, tuple[str, ...]]:
    """The pipeline's configs (building them checks the op, bank, template and swap names), the pair
    sets, ``pick_methods(args)`` and K against the model: all checked before any embedding."""
    configs = _configs(args)
    _check_pair_sets(args, configs[2])
    methods = pick_methods(args)
    _check_k_fits_the_model(args, configs[1])
    return configs, methods


def _target_or_default(args: argparse.Namespace, emb) -> str:
    """--target, else the demo's shifted domain or a folder's last (what the dashboard opens on)."""
    from clip_icm import service

    return args.target or service.default_target(emb, "demo" if _on_demo(args) else "folder")


def _own_pair_set_names(args: argparse.Namespace) -> list[str]:
    from clip_icm.user_pairs import pair_set_name

    return [pair_set_name("image-pairs", f) for f in args.image_pairs] + [pair_set_name("captions", f)
                                                                          for f in args.text_pairs]


def _check_pair_sets(args: argparse.Namespace, pairs) -> None:
    """--pair-sets against the names the run will build (``pairs``: its InterventionConfig), before
    any embedding."""
    from clip_icm.pipeline import planned_pair_sets

    if not args.pair_sets:
        return
    planned = planned_pair_sets(pairs)
    unknown = [name for name in args.pair_sets if name not in planned]
    if unknown:
        raise InvalidInput(f"--pair-sets: no pair set {', '.join(unknown)} in this run; it builds: "
                           f"{', '.join(planned) or '(none)'}")


def _check_k_fits_the_model(args: argparse.Namespace, model) -> None:
    """--k against the embedding dimension in ``model``'s config, before any image is embedded."""
    from clip_icm.backend import resolve_model

    if args.k is None:
        return
    dim = resolve_model(model).model_cfg.get("embed_dim")
    if dim is not None and args.k > dim:
        raise InvalidInput(f"--k must be between 1 and the embedding dimension {dim} of {model.name}, got {args.k}")


def _check_validation_rows(args: argparse.Namespace) -> None:
    """Our protocol chooses the probe's C, K and lam and the model on the sources' validation rows:
    --val-fraction 0 leaves none (the released protocol draws its own split)."""
    if args.val_fraction == 0 and args.protocol == "ours":
        raise InvalidInput(f"{args.command} needs source validation rows (the probe's C, K and lam and the model "
                           "to deploy are chosen on them): give --val-fraction above 0 (default 0.2)")


def _check_evaluate_args(args: argparse.Namespace) -> None:
    """Everything that can be checked without the embeddings, so a typo never costs an embedding run."""
    import math

    _check_validation_rows(args)
    if args.k is not None and args.k < 1:
        raise InvalidInput(f"--k must be at least 1, got {args.k}")
    if not math.isfinite(args.lam) or args.lam < 0 and tuple(args.methods or ()) != ("icm_as_released",):
        raise InvalidInput(f"--lam must be a finite number >= 0, got {args.lam} (a negative lam is accepted only "
                           "with --methods icm_as_released, the released slice, as the released code does)")
    if args.out is None:
        return
    if os.path.isdir(args.out):
        raise InvalidInput(f"--out {args.out!r} is a folder; give a file name")
    if not args.out.lower().endswith((".csv", ".json")):
        raise InvalidInput(f"--out must end in .csv or .json, got {args.out!r}")
    _check_out_file(args.out)


def _check_out_file(path: str) -> None:
    """--out ``path`` can be written: not a folder, in a writable folder, not a read-only file."""
    if os.path.isdir(path):
        raise InvalidInput(f"--out {path!r} is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InvalidInput(f"--out {path!r}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InvalidInput(f"--out {path!r}: the folder {parent} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):  # a rename would replace it regardless
        raise InvalidInput(f"--out {path!r} is read-only; remove it or give another file name")


def _evaluate_splits(args, run, config, targets: list[str], rule: str | None,
                     protocol: str) -> tuple[pd.DataFrame, dict[str, str], dict]:
    """choice.evaluate_and_choose per target (K and lam chosen for each split on its sources, then
    the model to deploy); a split that fails is recorded and the others still run, and a split
    whose model choice cannot run (say, one source domain) is evaluated without it. With --out,
    the rows so far are written as each split finishes. Returns (rows, failed, choices)."""
    from threadpoolctl import threadpool_limits

    from clip_icm.choice import evaluate_and_choose
    from clip_icm.evaluation import select_and_evaluate

    frames, failed, choices = [], {}, {}
    # Many small LAPACK calls: OpenBLAS's threads make them several times slower on a busy 2-core
    # machine (the default evaluate: 98 s with them, 21 s without, measured under load).
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("always")
        for target in targets:
            try:
                if config.protocol != "ours":  # the released preset reproduces the released code, which chose nothing
                    raise InvalidInput(f"the model choice runs under this project's protocol, not {config.protocol!r}")
                frame, choices[target] = evaluate_and_choose(run.embeddings, target, config, rule, protocol, args.choice)
            except ValueError as err:
                choices[target] = str(err)  # the reason the choice could not run
                try:
                    frame = select_and_evaluate(run.embeddings, target, config, rule, protocol=protocol)
                    frame["chosen"] = False
                except ValueError as err:
                    failed[target] = str(err)
                    continue
            frames.append(frame)
            if args.out:
                _write_results(args.out, _concat(frames), run, config, failed)
    _warn_once_per_kind(caught)
    return _concat(frames), failed, choices


def _choice_text(choices: dict) -> str:
    """Per target: every candidate's score ± its standard error (the chosen one starred), then
    why, then how the chosen model did against CLIP on the target (a description, not an input)."""
    import pandas as pd

    from clip_icm.choice import rule_text

    reasons = {target: c for target, c in choices.items() if isinstance(c, str)}
    if len(set(reasons.values())) == 1 and len(reasons) == len(choices):  # the same reason for every target: once
        return f"No model choice: {next(iter(reasons.values()))}\n"
    made = {target: c for target, c in choices.items() if not isinstance(c, str)}
    lines = [f"Model to deploy, per target ({rule_text(next(iter(made.values())).mode) if made else 'none'})", ""]
    if made:
        scores = pd.DataFrame({target: {row.candidate: f"{row.score:.3f}±{row.se:.3f}{'*' if row.chosen else ' '}"
                                        for row in c.table.itertuples()} for target, c in made.items()}).T
        scores.index.name = "score"
        lines += [scores.to_string(), ""]
    for target, c in choices.items():
        if isinstance(c, str):
            lines.append(f"No model choice for {target}: {c}")
            continue
        lines.append(f"{target}: deploy {c.chosen.candidate}. {c.why}")
        if c.shortfall:
            lines.append(f"    {c.shortfall}")
        for row in c.versus_clip.itertuples():
            lines.append(f"    on {target}, {c.chosen.candidate} vs {row.versus}: {row.difference * 100:+.1f} points "
                         f"(95% paired bootstrap {row.low * 100:+.1f} to {row.high * 100:+.1f}; McNemar p = "
                         f"{row.p_value:.2g}; n = {row.n}; a description of the result, not used to choose)")
    return "\n".join(lines) + "\n"


def _open_class_splits(args, run, config, targets: list[str]) -> pd.DataFrame:
    """The open-class task per target at the fixed K and lam (seeded class split: --seed)."""
    from threadpoolctl import threadpool_limits

    from clip_icm.evaluation import open_class_leave_one_domain_out

    with threadpool_limits(1, user_api="blas"):  # many small LAPACK calls, as in _evaluate_splits
        frame = open_class_leave_one_domain_out(run.embeddings, targets, config, split_seed=args.seed)
    if args.out:
        _write_results(args.out, frame, run, config, {})
    return frame


def _orth_cali_notes(frame: pd.DataFrame) -> list[str]:
    """Per Orth-Cali method: what its P0 removes (averaged over targets), with a warning when its
    spurious prompts span most of the class prompts' between-class energy."""
    from clip_icm.evaluation import spurious_span_text
    from clip_icm.methods import label as method_label

    if "spurious_span" not in frame.columns:
        return []
    lines = []
    columns = ["spurious_removed", "dim", "spurious_span", "spurious_prompts", "positive_pairs"]
    for method, rows in frame[frame.spurious_span.notna()].groupby("method", sort=False):
        text, warn = spurious_span_text(method_label(method), rows[columns].mean().to_dict())
        lines.append(text)
        if warn:
            lines.append(f"warning: {method_label(method)}'s spurious prompts span most of what tells the classes "
                         "apart, and P0 removes it (docs/FAITHFULNESS.md, the open-class gap)")
    return lines + ([""] if lines else [])


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _run_evaluate(args: argparse.Namespace) -> int:
    # Every name and value first, importing no maths: a typo must fail in a second, never after an
    # embedding run (minutes with ViT-B on PACS).
    spec = _protocol_args(args)  # fills the lam and precision the protocol fixes; checks protocol and task names
    _check_evaluate_args(args)
    configs, methods = _checked_configs(args, _methods)
    from clip_icm.evaluation import PROMPT_SETS, SCORING_LABELS

    start = time.perf_counter()
    run = _embed(args, configs, check_target=args.target)
    emb = run.embeddings
    config = _eval_config(args, emb.features.shape[1], methods)
    targets = list(emb.domain_names) if args.target == "all" else [args.target]
    rule = _selection(args)
    protocol = _select_for(args)
    choices = {}
    if args.task == "open_class":
        frame, failed = _open_class_splits(args, run, config, targets), {}
    else:
        frame, failed, choices = _evaluate_splits(args, run, config, targets, rule, protocol)
    _say(_run_summary(run, time.perf_counter() - start))
    chosen = (f"K, lam chosen per target by {SCORING_LABELS[rule]} ({protocol}), source data only, no target label"
              if rule else f"K={config.n_components}, lam={config.lam:g} fixed")
    pairs = ",".join(config.pair_sets) if config.pair_sets else "all built"
    _say(_evaluate_header(args, spec, config) + f"; {chosen}; lam {config.lam_mode}; fitted on pair sets: {pairs}; "
          f"zero-shot prompts: {PROMPT_SETS[config.prompts]}\n")
    if args.task == "open_class":
        _say(_open_class_table(frame, spec).to_string(float_format=lambda v: f"{v:.3f}", na_rep="n/a"))
        print()
    elif len(frame):
        table = _accuracy_table(frame, targets)
        table.index.name = f"target [protocol: {spec.label}]"
        _say(_table_text(table))
        print()
    for line in _orth_cali_notes(frame):
        print(line)
    _say(_choice_text(choices))
    _say(_skipped_text(run.skipped))
    _say_notes(run)
    if args.out:
        _say(f"Rows written to {args.out}")
    for target, reason in failed.items():
        _say(f"error: target {target!r}: {reason}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} of {len(targets)} split(s) failed; the others' results are above", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------- export
TABLE_FORMATS = ("parquet", "arrow")  # service.exports.TABLE_FORMATS (a test pins them)


def _add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    from clip_icm.methods import ALL_METHODS

    p = subparsers.add_parser(
        "export", help="write the embeddings as one Parquet (or Arrow) table for pandas, DuckDB, Embedding Atlas",
        description="One row per image: path, domain, class, split, role (the --target held out), the full and\n"
        "invariant 2-D UMAP coordinates, each method's predicted class (zero-shot and probe, fitted\n"
        "without the target) and the full and invariant vectors as fixed-size lists; the settings are\n"
        "in the file's schema metadata (key clip_icm). Columns: docs/EXPORT.md. K and lam are fixed\n"
        "(no selection runs here: take the ones evaluate chose). Embeds first, through the cache.",
        epilog="examples:\n  python -m clip_icm export --out demo.parquet\n"
        "  python -m clip_icm export --root ~/data --dataset PACS --model ViT-B-16-quickgelu --pretrained openai \\\n"
        "      --target sketch --k 256 --no-coordinates --out pacs.parquet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_args(p)
    ex = p.add_argument_group("export")
    ex.add_argument("--out", metavar="FILE", required=True, help="the file to write (replaced atomically)")
    ex.add_argument("--format", dest="table_format", choices=TABLE_FORMATS, default="parquet",
                    help="parquet (default) or arrow (the Arrow IPC file, Feather v2)")
    ex.add_argument("--target", metavar="DOMAIN", default=None,
                    help="the domain held out of every fit (default: the demo's shifted domain, else the last one)")
    ex.add_argument("--k", type=int, default=None, help="invariant dimension K (default min(64, D/2))")
    ex.add_argument("--lam", type=float, default=defaults.LAM, help="intervention weight (default %(default)g)")
    ex.add_argument("--lam-mode", default=defaults.LAM_MODE, choices=("absolute", "relative"),
                    help="as in evaluate (default %(default)s)")
    ex.add_argument("--methods", metavar="LIST", type=_csv_names, default=None,
                    help=f"methods whose predictions are written: {', '.join(ALL_METHODS)} (default all; CLIP always)")
    ex.add_argument("--pair-sets", metavar="LIST", type=_csv_names, default=None,
                    help="pair sets used to fit (default as evaluate)")
    ex.add_argument("--no-coordinates", dest="coordinates", action="store_false",
                    help="leave the four coordinate columns null: UMAP of every row is the slow part, and it "
                    "grows with the rows (docs/EXPORT.md)")
    # What evaluate lets one change and export keeps at this project's protocol and defaults.
    p.set_defaults(run=_run_export, protocol="ours", keep_target_styles=False, orth_cali_lam=defaults.ORTH_CALI_LAM,
                   orth_cali_queries="one")


def _run_export(args: argparse.Namespace) -> int:
    from clip_icm import service
    from clip_icm.store import EmbeddingStore

    _check_export_args(args)
    _check_validation_rows(args)
    configs, methods = _checked_configs(args, _methods)
    run = _embed(args, configs, check_target=args.target)
    emb = run.embeddings
    target = _target_or_default(args, emb)
    config = _eval_config(args, emb.features.shape[1], methods)
    store = EmbeddingStore(args.cache, max_size=args.cache_max_size)  # the layouts are kept there
    table = service.embedding_table(emb, target, config, coordinates=args.coordinates, seed=args.seed, store=store)
    _write_out(args.out, service.table_bytes(table, args.table_format))
    coordinates = "" if args.coordinates else " (coordinates left null: --no-coordinates)"
    _say(f"Wrote {table.num_rows} rows, {table.num_columns} columns ({args.table_format}) to {args.out}: target "
         f"{target}, K={config.n_components}, lam={config.lam:g} {config.lam_mode}{coordinates}")
    _say(_skipped_text(run.skipped))
    return 0


def _check_export_args(args: argparse.Namespace) -> None:
    """--out and the numbers, before any embedding."""
    import math

    if args.k is not None and args.k < 1:
        raise InvalidInput(f"--k must be at least 1, got {args.k}")
    if not math.isfinite(args.lam) or args.lam < 0:
        raise InvalidInput(f"--lam must be a finite number >= 0, got {args.lam}")
    _check_out_file(args.out)


# ---------------------------------------------------------------- report


def _add_report_parser(subparsers: argparse._SubParsersAction) -> None:
    from clip_icm.methods import ALL_METHODS

    p = subparsers.add_parser(
        "report", help="write one self-contained HTML report of a target: the story's figures, the table, the choice",
        description="One HTML file that opens offline (plotly.js inlined, thumbnails embedded): the world and its\n"
        "shift, CLIP's map and the invariant map, the target's confusion matrices, the interventions, the\n"
        "spectrum and invariance ratio, accuracy per domain, the model to deploy (chosen without a target\n"
        "label) for the target and for every domain held out in turn, and the provenance. The same\n"
        "functions and store as the dashboard, so the numbers are its numbers. docs/REPORT.md.",
        epilog="examples:\n  python -m clip_icm report --out demo-report.html\n"
        "  python -m clip_icm report --target cartoon --k 16 --lam 0.5 --out cartoon.html --images figures/\n"
        "  python -m clip_icm report --root ~/data --dataset PACS --model ViT-B-16-quickgelu --pretrained openai \\\n"
        "      --target sketch --out pacs-sketch.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_args(p)
    rep = p.add_argument_group("report")
    rep.add_argument("--out", metavar="FILE", required=True, help="the .html file to write (replaced atomically)")
    rep.add_argument("--target", metavar="DOMAIN", default=None,
                     help="the domain held out (default: the demo's shifted domain, else the last one)")
    rep.add_argument("--k", type=int, default=None, help="invariant dimension K (default: chosen by --select)")
    rep.add_argument("--lam", type=float, default=None, help="intervention weight lambda (default: chosen by --select)")
    rep.add_argument("--lam-mode", default=defaults.LAM_MODE, choices=("absolute", "relative"),
                     help="as in evaluate (default %(default)s)")
    rep.add_argument("--select", default=None, choices=("none", *SCORING_NAMES),
                     help="the rule that chooses K and lam on source data (default: interventional; none where --k "
                     "or --lam is typed)")
    rep.add_argument("--select-for", default="probe", choices=("probe", "zero-shot"),
                     help="which predictor the selection rule scores (default %(default)s)")
    rep.add_argument("--methods", metavar="LIST", type=_csv_names, default=None,
                     help=f"methods, comma-separated ({', '.join(ALL_METHODS)}): the first is drawn (maps, confusions, "
                     "spectrum), all are in the accuracy chart (default: icm, then the dashboard's baselines: "
                     f"{', '.join(defaults.DEMO_BASELINES)} on the demo, augmentation elsewhere)")
    rep.add_argument("--pair-sets", metavar="LIST", type=_csv_names, default=None,
                     help="pair sets used to fit (default as evaluate)")
    rep.add_argument("--choice", default=defaults.CHOICE, choices=defaults.CHOICE_MODES,
                     help="what the model to deploy is chosen on, as in evaluate (default %(default)s)")
    rep.add_argument("--this-target-only", dest="every_target", action="store_false",
                     help="leave out the model choice for every other domain held out in turn (the slow part)")
    rep.add_argument("--images", metavar="DIR", default=None,
                     help="also write every figure as PNG and SVG into DIR (needs kaleido: the [images] extra)")
    # What evaluate lets one change and the report keeps at this project's protocol and defaults.
    p.set_defaults(run=_run_report, protocol="ours", task="domain_shift", keep_target_styles=False,
                   orth_cali_lam=defaults.ORTH_CALI_LAM, orth_cali_queries="one")


def _run_report(args: argparse.Namespace) -> int:
    from clip_icm import report, service
    from clip_icm.store import EmbeddingStore

    _check_report_args(args)
    _check_validation_rows(args)
    configs, methods = _checked_configs(args, _report_methods)
    run = _embed(args, configs, check_target=args.target)
    emb = run.embeddings
    target = _target_or_default(args, emb)
    config = _eval_config(args, emb.features.shape[1], methods[1:])
    settings = report.Settings(method=methods[0], scoring=args.rule, select_for=_select_for(args), model=configs[1].name
                               + (f" / {configs[1].pretrained}" if configs[1].pretrained else ""),
                               interventions=configs[2], every_target=args.every_target, seed=args.seed,
                               choice_mode=args.choice)
    say = None if args.quiet else (lambda line: _say(line, file=sys.stderr))
    store = EmbeddingStore(args.cache, max_size=args.cache_max_size)  # the dashboard's layouts and results
    # a ToyDomains world's maps coloured by its shortcut (the true colour) too, as the dashboard's Story
    shortcut = service.true_factor_in(run.scan.folder, emb)
    made = report.build(emb, target, config, settings, store=store, say=say, shortcut=shortcut)
    _write_out(args.out, made.html.encode())
    _say(f"Wrote the report to {args.out} ({len(made.html) / 1e6:.1f} MB, {len(made.figures)} figures): target "
         f"{target}; opens offline in any browser")
    if args.images:
        written = report.write_images(made.figures, args.images)
        _say(f"Wrote {len(written)} images (PNG and SVG) to {args.images}")
    _say(_skipped_text(run.skipped))
    return 0


def _select_for(args: argparse.Namespace) -> str:
    from clip_icm.evaluation import LINEAR_PROBE, ZERO_SHOT

    return LINEAR_PROBE if args.select_for == "probe" else ZERO_SHOT


def _report_methods(args: argparse.Namespace) -> tuple[str, ...]:
    """The drawn method first, then the baselines beside it (the dashboard's by default)."""
    if args.methods is not None:
        if not args.methods:
            raise InvalidInput("--methods needs at least one method")
        return _methods(args)
    return ("icm", *(defaults.DEMO_BASELINES if _on_demo(args) else ("augmentation",)))


def _report_rule(args: argparse.Namespace) -> str | None:
    if args.select is not None:
        return None if args.select == "none" else args.select
    return None if args.k is not None or args.lam is not None else defaults.SELECTION


def _check_report_args(args: argparse.Namespace) -> None:
    """--out, --images and the numbers, before any embedding (as export's and evaluate's checks)."""
    import math

    if args.k is not None and args.k < 1:
        raise InvalidInput(f"--k must be at least 1, got {args.k}")
    if args.lam is not None and (not math.isfinite(args.lam) or args.lam < 0):
        raise InvalidInput(f"--lam must be a finite number >= 0, got {args.lam}")
    _check_out_file(args.out)
    if not args.out.lower().endswith((".html", ".htm")):
        raise InvalidInput(f"--out must end in .html, got {args.out!r}")
    import importlib.util

    missing = [name for name in ("plotly", "umap") if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidInput(f"report draws with plotly and umap-learn, and {' and '.join(missing)} is not installed: "
                           "pip install '.[dashboard]'")
    if args.images is not None:
        from clip_icm.service import png_available

        if os.path.exists(args.images) and not os.path.isdir(args.images):
            raise InvalidInput(f"--images {args.images!r} is a file; give a folder")
        if not png_available():
            raise InvalidInput("--images needs kaleido, which is not installed: pip install '.[images]' (kaleido, "
                               "which drives an installed Chrome or Chromium); the HTML report needs no --images")
    args.rule = _report_rule(args)
    args.lam = defaults.LAM if args.lam is None else args.lam  # the fixed lam where --select none and none typed


# ---------------------------------------------------------------- cache
CACHE_KINDS = ("embeddings", "pairs", "layouts", "kept results")  # cache.KINDS (a test pins them)


def _add_cache_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cache", help="see, bound and clean the cache (as pip cache does)",
        description="The cache folder holds the store's entries (embeddings, pairs, layouts, kept results),\n"
        "the demo world's images, compiled UMAP kernels and small memos. $CLIP_ICM_CACHE moves it;\n"
        "$CLIP_ICM_CACHE_MAX_SIZE (or embed/evaluate --cache-max-size) bounds its entries: a write that\n"
        "would pass the bound removes the least recently used entries first, and says so in one line.",
        epilog="examples:\n  python -m clip_icm cache info\n  python -m clip_icm cache prune --older-than 30d\n"
        "  python -m clip_icm cache prune --max-size 2GB\n  python -m clip_icm cache clear --dataset PACS --yes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = actions.add_parser("info", help="folder, total size, entries by kind and by data set and model, orphans")
    listing = actions.add_parser("list", help="every entry, most recently used first")
    listing.add_argument("--dataset", metavar="NAME", default=None, help="only this data set's (name or folder)")
    listing.add_argument("--kind", choices=CACHE_KINDS, default=None, help="only entries of this kind")
    prune = actions.add_parser("prune", help="remove orphaned files, and entries by age or beyond a total size, "
                               "least recently used first")
    prune.add_argument("--older-than", metavar="AGE", type=_age, default=None,
                       help="remove entries last used longer ago than AGE (e.g. 30d, 12h, 90m, 2w)")
    prune.add_argument("--max-size", metavar="SIZE", type=_size, default=None,
                       help="then remove the least recently used entries until the rest take at most SIZE "
                            "(e.g. 2GB, 500MB, 1.5GiB)")
    clear = actions.add_parser("clear", help="remove every entry (or one data set's), after a confirmation")
    clear.add_argument("--dataset", metavar="NAME", default=None, help="only this data set's entries (name or folder)")
    clear.add_argument("--all", action="store_true", dest="everything",
                       help="also the demo world's images, the compiled UMAP kernels and the memos")
    clear.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    for sub, run in ((info, _run_cache_info), (listing, _run_cache_list), (prune, _run_cache_prune),
                     (clear, _run_cache_clear)):
        _add_cache_folder_arg(sub)
        sub.add_argument("--json", action="store_true", help="print JSON instead of text")
        sub.set_defaults(run=run)


def _run_cache_info(args: argparse.Namespace) -> int:
    from clip_icm import cache

    report = cache.info(args.cache)
    print(json.dumps(report, indent=1) if args.json else _cache_info_text(report))
    return 0


def _cache_info_text(report: dict) -> str:
    from clip_icm.cache import MAX_SIZE_VAR, PARTS, format_size

    bound = format_size(report["max_size"]) if report["max_size"] is not None else f"none (${MAX_SIZE_VAR})"
    lines = [f"Cache folder: {report['folder']}", f"Total size: {format_size(report['total_bytes'])}",
             f"Entries: {report['entries']}, {format_size(report['entry_bytes'])}; bound: {bound}"]
    lines += [f"  {kind:<13}{n['entries']:>7}  {format_size(n['bytes']):>9}" for kind, n in report["kinds"].items()]
    lines.append("By data set and model:" if report["datasets"] else "By data set and model: (no entries)")
    lines += [f"  {g['dataset']} / {g['model']}: {g['entries']} entries, {format_size(g['bytes'])}"
              for g in report["datasets"]]
    orphans = report["orphans"]
    lines.append(f"Orphaned files: {orphans['files']}, {format_size(orphans['bytes'])}"
                 + (" (python -m clip_icm cache prune removes them)" if orphans["files"] else ""))
    lines.append("Other: " + (", ".join(f"{name}/ {format_size(size)} ({PARTS[name]})"
                                        for name, size in report["other"].items()) or "none"))
    return "\n".join(lines)


def _run_cache_list(args: argparse.Namespace) -> int:
    from clip_icm import cache

    found = cache.entries(args.cache, args.dataset, args.kind)
    if args.json:
        print(json.dumps([cache.entry_row(e) for e in found], indent=1))
        return 0
    for e in found:
        row = cache.entry_row(e)
        print(f"{row['last_used']}  {e.kind:<12}  {cache.format_size(e.size):>9}  {e.dataset} / {e.model}  "
              f"{e.key[:12]}")
    print(f"{len(found)} entries, {cache.format_size(sum(e.size for e in found))}")
    return 0


def _run_cache_prune(args: argparse.Namespace) -> int:
    from clip_icm import cache

    removed = cache.prune(args.cache, args.older_than, args.max_size)
    print(json.dumps(vars(removed)) if args.json else _removed_text(removed))
    return 0


def _run_cache_clear(args: argparse.Namespace) -> int:
    from clip_icm import cache

    if args.everything and args.dataset:
        raise UsageError("python -m clip_icm cache clear: error: --all and --dataset exclude each other")
    if not args.yes and not _confirmed(_clear_question(args)):
        return 1
    removed = cache.clear(args.cache, args.dataset, args.everything)
    print(json.dumps(vars(removed)) if args.json else _removed_text(removed))
    return 0


def _clear_question(args: argparse.Namespace) -> str:
    from clip_icm import cache

    found = cache.entries(args.cache, args.dataset)
    what = f"{len(found)} entries ({cache.format_size(sum(e.size for e in found))})"
    what += f" of {args.dataset}" if args.dataset else ""
    what += " and the demo world, UMAP kernels and memos" if args.everything else ""
    return f"Remove {what} from {cache.scan(args.cache).root}?"


def _confirmed(question: str) -> bool:
    """Ask on the terminal; with none to ask on, refuse in one line (--yes is the way to script it)."""
    if not (sys.stdin and sys.stdin.isatty()):
        print(f"error: {question[:-1]}: not without confirmation, and there is no terminal to ask on; "
              "add --yes", file=sys.stderr)
        return False
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        print("Nothing removed.")
        return False
    return True


def _removed_text(removed) -> str:
    from clip_icm.cache import format_size

    kinds = ", ".join(f"{n} {kind}" for kind, n in removed.kinds.items())
    text = (f"Removed {removed.entries} entries" + (f" ({kinds})" if kinds else "")
            + f" and {removed.orphans} orphaned files: {format_size(removed.bytes)}")
    if removed.busy:
        text += f"; left {removed.busy} entries in use by another process"
    return text


# ---------------------------------------------------------------- main
PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_playground_parser, _add_embed_parser, _add_evaluate_parser, _add_cache_parser, _add_export_parser,
    _add_report_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m clip_icm",
        description="CLIP-ICM Explorer: find the directions of CLIP embeddings that interventions do not move "
        "(the Invariant Causal Mechanism) and measure what they do to out-of-domain accuracy. playground needs "
        "no data; embed and evaluate default to the bundled ToyDomains demo and its tiny toy-clip model, "
        "so every command runs offline as it is.",
        epilog="start with: python -m clip_icm playground, then python -m clip_icm evaluate; "
        "COMMAND --help lists a command's options",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 bad input, 2 bad usage)."""
    try:
        args = build_parser().parse_args(_negative_values_attached(sys.argv[1:] if argv is None else argv))
        code = args.run(args)
        sys.stdout.flush()  # here, not at exit: a pipe buffers the output, and a closed one fails on flush
        return code
    except UsageError as err:
        _say(err, file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help ends here
        return exit_.code if isinstance(exit_.code, int) else 0
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:  # every finished chunk is in the cache already: a rerun resumes there
        print("\ninterrupted: what was embedded so far is kept in the cache; run the command again to resume",
              file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
    except (UserError, OSError) as err:  # anything else is a bug: its traceback is the report
        _say(f"error: {err}", file=sys.stderr)
        return 1


SIZE_AND_AGE_FLAGS = ("--max-size", "--cache-max-size", "--older-than")


def _negative_values_attached(argv: list[str]) -> list[str]:
    """``--max-size -1GB`` as ``--max-size=-1GB``: argparse takes "-1GB" for an option and would
    answer "expected one argument", where the size's own check says what is wrong with it."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in SIZE_AND_AGE_FLAGS and re.match(r"-[0-9.]", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _stdout_closed() -> int:
    """The reader left (``| head``): what was to be written to files is written already, so
    stop quietly. stdout now points at devnull, so the flush at exit does not fail again
    (the recipe of the Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell tool killed by a closed pipe reports
