"""Command line: ``python -m clip_icm <command>``.

Each command is one ``_add_<name>_parser(subparsers)`` that registers its flags and
sets ``run=_run_<name>``; adding a command is adding its pair of functions and
listing the first in :data:`PARSERS`. Bad input ends in one line on stderr and a
non-zero exit code, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import pandas as pd


class UsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit, so main can answer in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: error: {message}")


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


# ---------------------------------------------------------------- playground
PLAYGROUND_LABELS = {"full": "full space", "icm": "ICM top-K", "icm_as_released": "ICM as released"}


def _add_playground_parser(subparsers: argparse._SubParsersAction) -> None:
    from clip_icm.scm import SCMConfig

    d = SCMConfig()
    p = subparsers.add_parser(
        "playground",
        help="the causal playground: a linear SCM where the invariant subspace is known",
        description="Fit ICM on true interventions in a linear SCM and show, as the test-time shift grows, "
        "ID/OOD accuracy, subspace recovery (largest principal angle) and R^2 of the factors.",
    )
    p.add_argument("--n-invariant", type=int, default=d.n_invariant, help="invariant factors (default %(default)s)")
    p.add_argument("--n-variant", type=int, default=d.n_variant, help="variant factors (default %(default)s)")
    p.add_argument("--dim", type=int, default=None, help="embedding dimension (default n-invariant + n-variant)")
    p.add_argument("--classes", type=int, default=d.n_classes, help="number of classes (default %(default)s)")
    p.add_argument("--spurious", type=float, default=d.spurious_correlation,
                   help="P(variant factors follow the class) in training (default %(default)s)")
    p.add_argument("--noise", type=float, default=d.noise, help="observation noise std (default %(default)s)")
    p.add_argument("--condition", type=float, default=d.mixing_condition,
                   help="condition number of the mixing (default %(default)s)")
    p.add_argument("--shifts", type=_float_list, default=(0.0, 0.25, 0.5, 0.75, 1.0),
                   help="comma-separated test-time shifts in [0, 1] (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--lam", type=float, default=1e4, help="ICM lambda, absolute (default %(default)g)")
    p.add_argument("--k", type=int, default=None, help="ICM dimension K (default: the true n-invariant)")
    p.add_argument("--n-train", type=int, default=4000, help="training samples = pairs (default %(default)s)")
    p.add_argument("--n-test", type=int, default=2000, help="samples per test set (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the world and the samples (default %(default)s)")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    p.set_defaults(run=_run_playground)


def _run_playground(args: argparse.Namespace) -> int:
    from clip_icm.scm import SCMConfig, run_playground

    if args.n_train < 2 or args.n_test < 4:
        raise ValueError("--n-train must be >= 2 and --n-test >= 4")
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
    shown = table.assign(method=table.method.map(PLAYGROUND_LABELS)).rename(columns={
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
        f"{PLAYGROUND_LABELS[m]} {last[m]:+.3f}" for m in PLAYGROUND_LABELS
    )
    body = shown.to_string(
        index=False, na_rep="-", float_format=lambda v: f"{v:.3f}",
        formatters={"max angle (rad)": lambda v: "-" if pd.isna(v) else f"{v:.1e}"},
    )
    return "\n".join([header, "", body, "", summary])


# ---------------------------------------------------------------- main
PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [_add_playground_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m clip_icm", description="CLIP-ICM Explorer")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 bad input, 2 bad usage)."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help and --version end here
        return exit_.code if isinstance(exit_.code, int) else 0
    except (ValueError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 1
