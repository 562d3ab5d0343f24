"""The `jaxprune` command line: argparse over the public API, no logic of its own.

Subcommands: ``demo`` (the whole paper on the digits data: `jaxprune.demo.run_demo`), ``prune``
(`jaxprune.demo.prune_to_folder`), ``report`` (`jaxprune.count_macs`), ``table`` (`jaxprune.paper`),
``sensitivity``, ``finetune`` and ``train`` (thin front ends of `jaxprune.demo`'s steps). Exit status: 0 on success,
2 on a usage error, bad input or a file-system error such as a full disk (one line on stderr), 130 when
interrupted (Ctrl-C). Writing commands never overwrite an output folder holding another run's results unless given
``--overwrite`` (see `jaxprune._outdir`). Set ``JAXPRUNE_TRACEBACK=1`` to
see the full traceback of an error instead of its one-line message.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from jaxprune import _interrupt

__all__ = ["build_parser", "main"]

PROG = "jaxprune"

#: Exceptions that mean "bad input": reported on one line, exit status 2.
#: OSError covers the file system's refusals too (missing or taken paths, permissions, a read-only or full disk).
_INPUT_ERRORS = (ValueError, TypeError, OSError)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------------------------------------------------
# Argument types: turn one string into one value, or say in one line what is wrong.
# ----------------------------------------------------------------------------------------------------------------------
def _number(convert, ok, bad: str, *, kind: str = "a number"):
    """An argument type: `convert` the text (else "is not `kind`"), then require `ok(value)` (else "<text> `bad`")."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} {bad}")
        return value

    return parse


_ratio = _number(
    float,
    lambda p: 0.0 <= p < 1.0,
    "is outside [0, 1) (the fraction of filters removed)",
    kind="a number; a prune ratio is in [0, 1)",
)
_positive_int = _number(int, lambda v: v >= 1, "must be >= 1", kind="an integer")
_non_negative_int = _number(int, lambda v: v >= 0, "must be >= 0", kind="an integer")
_positive_float = _number(float, lambda v: v > 0, "must be > 0")
_fraction = _number(float, lambda v: 0.0 < v <= 1.0, "must be a fraction of the original in (0, 1]")
_non_negative_float = _number(float, lambda v: v >= 0, "must be >= 0")


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


def _out_path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "is empty; give the folder to write into (an empty path is the current folder)"
        )
    return text


def _add_out(p, *, required: bool = False, default: str | None = None, help: str) -> None:
    p.add_argument("--out", type=_out_path, required=required, default=default, metavar="DIR", help=help)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it holds another run's results (the old results stay until this run has finished)",
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
    _add_out(p, default="jaxprune-demo", help="output folder (default ./jaxprune-demo)")
    p.add_argument(
        "--quick", action="store_true", help="a shorter run (2 training epochs, 1 of fine-tuning; about 100 s of CPU)"
    )
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
    how.add_argument(
        "--ratio", type=_ratio, dest="prune_ratio", help="fraction of filters removed from every conv-filter group"
    )
    how.add_argument(
        "--ratios",
        type=_ratios,
        dest="prune_ratio",
        metavar="NAME=R,...",
        help="per stage or group, e.g. stage1=0.6,stage2=0.3",
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
    _add_out(p, required=True, help="output folder")

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
    p.add_argument("--bn", dest="include_bn", action="store_true", help="list BatchNorm rows too")
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
    _add_out(p, help="write sensitivity.md, suggestion.txt and figures here")
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
    _add_out(p, required=True, help="checkpoint folder")
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
    _add_out(p, required=True, help="checkpoint folder for the fine-tuned model")
    _add_progress(p)
    return parser


# ----------------------------------------------------------------------------------------------------------------------
# Running a command: every subcommand is one public call whose keywords are the parsed arguments (the parser's dest
# names are the function's keyword names), then one print of what it returns.
# ----------------------------------------------------------------------------------------------------------------------
def _tables(*, table2: bool) -> str:
    from jaxprune import paper

    return paper.format_table1() + (f"\n\n{paper.format_table2()}" if table2 else "")


#: command -> (module, function, whether it takes ``log=print``). The function returns None, a str, or an outcome
#: with ``.text``.
_COMMANDS = {
    "demo": ("jaxprune.demo", "run_demo", True),
    "prune": ("jaxprune.demo", "prune_to_folder", False),
    "report": ("jaxprune.demo", "report_text", False),
    "table": ("jaxprune.cli", "_tables", False),
    "sensitivity": ("jaxprune.demo", "sensitivity_from_checkpoint", False),
    "train": ("jaxprune.demo", "train_to_folder", True),
    "finetune": ("jaxprune.demo", "finetune_to_folder", True),
}
#: Parsed arguments that are not keywords of the command's function.
_CLI_ONLY = ("command", "overwrite")
#: Keywords that do not change what a run writes, so a rerun that differs only in them is the same run.
_NOT_IDENTITY = ("out", "progress", "retrain", "log")
_PATH_ARGS = ("checkpoint",)


def _run_identity(command: str, kwargs, argv: Sequence[str] | None) -> dict:
    args = {k: v for k, v in kwargs.items() if k not in _NOT_IDENTITY}
    for k in _PATH_ARGS:
        if args.get(k) is not None:
            args[k] = os.path.abspath(args[k])
    line = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    return {"command": command, "args": args, "command_line": line}


def _run(args, argv: Sequence[str] | None = None) -> None:
    """Calls the command's function with the parsed arguments, inside the output-folder policy when it writes."""
    import importlib

    from jaxprune._outdir import output_run

    module, name, takes_log = _COMMANDS[args.command]
    fn = getattr(importlib.import_module(module), name)
    kwargs = {k: v for k, v in vars(args).items() if k not in _CLI_ONLY}
    if takes_log:
        kwargs["log"] = print
    out = kwargs.get("out")
    if out is None:
        result = fn(**kwargs)
    else:
        prog = f"{PROG} {args.command}"
        run = _run_identity(args.command, kwargs, argv)
        with output_run(
            out, run, overwrite=args.overwrite, on_keep=lambda line: print(f"{prog}: {line}", file=sys.stderr)
        ) as folder:
            result = fn(**{**kwargs, "out": folder})
        if folder != out:  # --overwrite: the results now live in `out`
            result = _moved(result, folder, out)
    text = getattr(result, "text", result)
    if text is not None:
        print(text)


def _moved(result, old: str, new: str):
    text = getattr(result, "text", result)
    return text.replace(old, os.path.normpath(new)) if isinstance(text, str) else text


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
    clear the backends while XLA's threads may still hold the interrupted work, so that teardown is skipped. An
    interrupt that Python swallows (raised inside a finaliser) is raised again before the next training step
    (`jaxprune._interrupt`).
    """
    program = argv is None
    if program:
        _interrupt.install()  # an interrupt raised inside a finaliser is raised again at the next step
    return _main(sys.argv[1:] if program else argv, program=program)


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


def _main(argv: Sequence[str], *, program: bool) -> int:
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
        _run(args, argv)
    except KeyboardInterrupt:
        return _interrupted(prog, program=program)
    except (*_INPUT_ERRORS, ImportError) as e:  # bad input: 2; a missing optional dependency: 1
        if os.environ.get("JAXPRUNE_TRACEBACK"):
            raise
        sys.stdout.flush()
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 1 if isinstance(e, ImportError) else 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
