"""The `jaxprune` command line: argparse over the public API, no logic of its own.

Subcommands: ``demo`` (the whole paper on the digits data: `jaxprune.demo.run_demo`), ``prune``
(`jaxprune.demo.prune_to_folder`), ``report`` (`jaxprune.count_macs`), ``table`` (`jaxprune.paper`),
``sensitivity``, ``finetune`` and ``train`` (thin front ends of `jaxprune.demo`'s steps). Exit status: 0 on success,
2 on a usage error or bad input (one line on stderr), 130 when interrupted (Ctrl-C). Set ``JAXPRUNE_TRACEBACK=1`` to
see the full traceback of an error instead of its one-line message.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

PROG = "jaxprune"

#: Exceptions that mean "bad input": reported on one line, exit status 2.
_INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------------------------------------------------
# Argument types: turn one string into one value, or say in one line what is wrong.
# ----------------------------------------------------------------------------------------------------------------------
def _ratio(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; a prune ratio is in [0, 1)") from None
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1) (the fraction of filters removed)")
    return p


def _ratios(text: str) -> dict[str, float]:
    from jaxprune.demo import parse_ratios

    try:
        return parse_ratios(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ratio_list(text: str) -> tuple[float, ...]:
    items = [s.strip() for s in text.split(",")]
    try:
        return tuple(float(s) for s in items)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ratios, e.g. 0.2,0.5,0.8"
        ) from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be a fraction of the original in (0, 1]")
    return v


def _non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return v


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


# ----------------------------------------------------------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------------------------------------------------------
def _model_names() -> tuple[str, ...]:
    from jaxprune import models

    return models.available()


def _preset_names() -> tuple[str, ...]:
    from jaxprune import presets

    return tuple(presets.available())


def _strategies() -> tuple[str, ...]:
    from jaxprune.strategies import STRATEGIES

    return STRATEGIES


def _criteria() -> tuple[str, ...]:
    from jaxprune.scoring import CRITERIA

    return CRITERIA


def _digits_models() -> tuple[str, ...]:
    from jaxprune.demo import DIGITS_MODELS

    return DIGITS_MODELS


def _add_model(p, *, required: bool, default: str | None = None, help: str = "zoo model", digits: bool = False) -> None:
    names = _digits_models() if digits else _model_names()
    p.add_argument(
        "--model",
        choices=names,
        required=required,
        default=default,
        metavar="NAME",
        help=f"{help}: {', '.join(names)}" + (f" (default {default})" if default else ""),
    )


def _add_progress(p) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _add_train_options(p, *, epochs: int, lr: float, batch_size: int) -> None:
    p.add_argument("--epochs", type=_positive_int, default=None, help=f"epochs (default {epochs})")
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"initial learning rate, divided by 10 at 50%% and 75%% of the run (default {lr:g})",
    )
    p.add_argument("--batch-size", type=_positive_int, default=None, help=f"batch size (default {batch_size})")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
    """The `jaxprune` argument parser (every subcommand has ``--help``)."""
    parser = _Parser(
        prog=PROG,
        description="Structured filter pruning for JAX/Flax after Li et al., 'Pruning Filters for Efficient "
        "ConvNets' (ICLR 2017).",
        epilog="Start with 'jaxprune demo'. Exit status: 0 success, 2 bad input (one line on stderr; set "
        "JAXPRUNE_TRACEBACK=1 for the full traceback), 130 interrupted.",
    )
    from jaxprune import __version__
    from jaxprune.demo import FULL_RECIPE as recipe
    from jaxprune.demo import QUICK_RECIPE as quick

    parser.add_argument("--version", action="version", version=f"jaxprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # demo ---------------------------------------------------------------------------------------------------------
    p = sub.add_parser(
        "demo",
        help="the whole paper on real data: train, scan, prune, fine-tune, report",
        description="Train a network on the digits data (or reuse the checkpoint cached in --out), scan the "
        "sensitivity of every layer, suggest per-stage ratios, prune, fine-tune, then report accuracy, params, "
        "MACs, XLA FLOPs and measured CPU latency before -> after. Writes the plan, checkpoints, figures and "
        "report.md to --out.",
    )
    _add_model(p, required=False, default="resnet20", help="model to train and prune", digits=True)
    p.add_argument("--out", default="jaxprune-demo", help="output folder (default ./jaxprune-demo)")
    p.add_argument("--quick", action="store_true", help="a shorter run for CI (about a minute)")
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help=f"training epochs (default {recipe.epochs}, --quick {quick.epochs})",
    )
    p.add_argument(
        "--finetune-epochs",
        type=_positive_int,
        default=None,
        help=f"fine-tuning epochs (default {recipe.finetune_epochs}, --quick {quick.finetune_epochs})",
    )
    p.add_argument(
        "--target-macs",
        type=_fraction,
        default=None,
        metavar="F",
        help=f"keep this fraction of the MACs, pruning the least sensitive stages (default {recipe.target_macs:g})",
    )
    p.add_argument(
        "--tolerance",
        type=_non_negative_float,
        default=None,
        metavar="T",
        help="the paper's way instead: per-stage ratios with every layer's single-layer accuracy drop <= T, "
        "sensitive layers skipped (with --target-macs: a cap on each layer's drop)",
    )
    p.add_argument("--round-to", type=_positive_int, default=8, help="round kept widths to a multiple (default 8)")
    p.add_argument("--retrain", action="store_true", help="train again even if --out holds a trained checkpoint")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    _add_progress(p)

    # prune --------------------------------------------------------------------------------------------------------
    p = sub.add_parser(
        "prune",
        help="prune a model by a preset or ratios; write checkpoint, plan and comparison",
        description="Prune a zoo model (random weights, or the weights of --checkpoint) by a paper preset, one "
        "ratio for every conv-filter group, or per-stage/per-group ratios. Writes the pruned checkpoint, the plan "
        "(plan.json) and a per-layer comparison table (comparison.txt) to --out.",
    )
    _add_model(p, required=False, help="zoo model (needed unless --checkpoint is given)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--preset", choices=_preset_names(), metavar="NAME", help=f"paper preset: {', '.join(_preset_names())}"
    )
    how.add_argument("--ratio", type=_ratio, help="fraction of filters removed from every conv-filter group")
    how.add_argument(
        "--ratios", type=_ratios, metavar="NAME=R,...", help="per stage or group, e.g. stage1=0.6,stage2=0.3"
    )
    p.add_argument(
        "--strategy",
        choices=_strategies(),
        default="independent",
        metavar="NAME",
        help=f"{', '.join(_strategies())} (default independent)",
    )
    p.add_argument(
        "--criterion", choices=_criteria(), default="l1", metavar="NAME", help=f"{', '.join(_criteria())} (default l1)"
    )
    p.add_argument("--round-to", type=_positive_int, default=1, help="round kept widths to a multiple, e.g. 8")
    p.add_argument("--skip", type=_names, default=(), metavar="G,...", help="groups left unpruned")
    p.add_argument("--checkpoint", metavar="DIR", help="prune the weights of this jaxprune checkpoint")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")

    # report -------------------------------------------------------------------------------------------------------
    p = sub.add_parser(
        "report",
        help="per-layer MACs and params of a model or checkpoint",
        description="The per-layer MAC and parameter table (paper convention: conv + dense multiply-accumulates) "
        "of a zoo model or of the model stored in a checkpoint.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR", help="a jaxprune checkpoint folder")
    src.add_argument("--model", choices=_model_names(), metavar="NAME", help=f"zoo model: {', '.join(_model_names())}")
    p.add_argument("--input-size", type=_positive_int, default=None, help="input height = width (default: the model's)")
    p.add_argument("--bn", action="store_true", help="list BatchNorm rows too")
    p.add_argument(
        "--exclude-projections",
        action="store_true",
        help="leave 1x1 projection shortcuts out (the paper's ResNet-34 convention)",
    )
    p.add_argument("--xla", action="store_true", help="also XLA's FLOP count of the compiled forward (compiles)")

    # table --------------------------------------------------------------------------------------------------------
    p = sub.add_parser(
        "table",
        help="the paper's Table 1 (and 2) reproduced",
        description="Li et al. Table 1 reproduced from the presets: our MACs and params beside the printed values.",
    )
    p.add_argument("--table2", action="store_true", help="print Table 2 (VGG-16 per layer) as well")

    # sensitivity --------------------------------------------------------------------------------------------------
    p = sub.add_parser(
        "sensitivity",
        help="prune one layer at a time on the digits data; suggest ratios",
        description="The paper's sensitivity analysis (§3.2): prune one group at a time at increasing ratios and "
        "measure accuracy on held-out digits images without retraining; then suggest per-stage ratios.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a trained jaxprune checkpoint (e.g. from train)")
    p.add_argument(
        "--ratios", type=_ratio_list, default=None, metavar="R,...", help="ratios to scan (default 0.1..0.9)"
    )
    p.add_argument(
        "--criterion", choices=_criteria(), default="l1", metavar="NAME", help=f"{', '.join(_criteria())} (default l1)"
    )
    p.add_argument("--tolerance", type=_non_negative_float, default=0.02, help="allowed accuracy drop (default 0.02)")
    p.add_argument("--round-to", type=_positive_int, default=1, help="round kept widths to a multiple, e.g. 8")
    p.add_argument("--images", type=_positive_int, default=None, help="training images to evaluate on (default 256)")
    p.add_argument("--out", default=None, metavar="DIR", help="write sensitivity.md, suggestion.txt and figures here")
    _add_progress(p)

    # train --------------------------------------------------------------------------------------------------------
    p = sub.add_parser(
        "train",
        help="train a zoo model on the digits data; checkpoint every epoch",
        description="Train a zoo model on the embedded digits data with the paper's optimizer (SGD with momentum, "
        "weight decay, learning rate divided by 10 at 50% and 75% of training). Writes a checkpoint to --out after "
        "every epoch; Ctrl-C leaves the last complete one intact, and the same command resumes from it.",
    )
    _add_model(p, required=False, default="resnet20", help="model to train", digits=True)
    _add_train_options(p, epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size)
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder")
    _add_progress(p)

    # finetune -----------------------------------------------------------------------------------------------------
    p = sub.add_parser(
        "finetune",
        help="fine-tune a (pruned) checkpoint on the digits data",
        description="Fine-tune the model of a checkpoint (e.g. from 'jaxprune prune --checkpoint ...') on the "
        "digits data with the training optimizer and a fresh state (the paper retrains at lr 0.001 for 40 epochs; "
        "a few epochs need a larger, decaying rate). Writes a checkpoint to --out after every epoch.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="the checkpoint to start from")
    _add_train_options(p, epochs=recipe.finetune_epochs, lr=recipe.finetune_lr, batch_size=recipe.batch_size)
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder for the fine-tuned model")
    _add_progress(p)
    return parser


# ----------------------------------------------------------------------------------------------------------------------
# Handlers: one public call each, then print what it returns.
# ----------------------------------------------------------------------------------------------------------------------
def _cmd_table(args) -> None:
    from jaxprune import paper

    print(paper.format_table1())
    if args.table2:
        print()
        print(paper.format_table2())


def _cmd_report(args) -> None:
    from jaxprune import demo

    print(
        demo.report_text(
            model=args.model,
            checkpoint=args.checkpoint,
            input_size=args.input_size,
            include_bn=args.bn,
            exclude_projections=args.exclude_projections,
            xla=args.xla,
        )
    )


def _cmd_prune(args) -> None:
    from jaxprune import demo

    outcome = demo.prune_to_folder(
        args.out,
        model=args.model,
        checkpoint=args.checkpoint,
        preset=args.preset,
        prune_ratio=args.ratio if args.ratio is not None else args.ratios,
        strategy=args.strategy,
        criterion=args.criterion,
        round_to=args.round_to,
        skip=args.skip,
        seed=args.seed,
    )
    print(outcome.text)


def _cmd_demo(args) -> None:
    from jaxprune import demo

    demo.run_demo(
        args.out,
        model=args.model,
        quick=args.quick,
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        tolerance=args.tolerance,
        target_macs=args.target_macs,
        round_to=args.round_to,
        retrain=args.retrain,
        seed=args.seed,
        progress=args.progress,
        log=print,
    )


def _cmd_sensitivity(args) -> None:
    from jaxprune import demo

    print(
        demo.sensitivity_from_checkpoint(
            args.checkpoint,
            ratios=args.ratios,
            criterion=args.criterion,
            tolerance=args.tolerance,
            round_to=args.round_to,
            images=args.images,
            out=args.out,
            progress=args.progress,
        ).text
    )


def _cmd_train(args) -> None:
    from jaxprune import demo

    print(
        demo.train_to_folder(
            args.out,
            model=args.model,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=args.progress,
            log=print,
        ).text
    )


def _cmd_finetune(args) -> None:
    from jaxprune import demo

    print(
        demo.finetune_to_folder(
            args.out,
            checkpoint=args.checkpoint,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=args.progress,
            log=print,
        ).text
    )


_COMMANDS = {
    "demo": _cmd_demo,
    "prune": _cmd_prune,
    "report": _cmd_report,
    "table": _cmd_table,
    "sensitivity": _cmd_sensitivity,
    "train": _cmd_train,
    "finetune": _cmd_finetune,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line.

    Args:
      argv: Arguments after the program name; default ``sys.argv[1:]``.

    Returns:
      The exit status: 0 success, 2 usage error or bad input (one line on stderr), 130 interrupted.

    Run as the program (`argv` None: the ``jaxprune`` script, ``python -m jaxprune``), an interrupt does not return:
    once stdout and stderr are flushed the process ends with ``os._exit(130)``. Every checkpoint is complete by then
    (each is written atomically). The interpreter's teardown is what crashed: SIGSEGV after the "interrupted" line,
    reproduced with a compilation cache when the interrupt came during the first compile; jax's exit handlers
    clear the backends while XLA's threads may still hold the interrupted work, so that teardown is skipped.
    """
    program = argv is None
    return _run(sys.argv[1:] if program else argv, program=program)


def _interrupted(prog: str, *, program: bool) -> int:
    """Says what an interrupt left; as the program, ends the process here without interpreter teardown (`main`)."""
    if program:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the exit itself
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    print(f"\n{prog}: interrupted; checkpoints written so far are complete", file=sys.stderr)
    if program:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(130)
    return 130


def _run(argv: Sequence[str], *, program: bool) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2, already printed)
        return int(e.code or 0)
    if args.command is None:
        print(f"{PROG}: error: missing command; one of: {', '.join(_COMMANDS)} (see '{PROG} --help')", file=sys.stderr)
        return 2
    prog = f"{PROG} {args.command}"
    try:
        _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return _interrupted(prog, program=program)
    except _INPUT_ERRORS as e:
        if os.environ.get("JAXPRUNE_TRACEBACK"):
            raise
        sys.stdout.flush()
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ImportError as e:
        if os.environ.get("JAXPRUNE_TRACEBACK"):
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
