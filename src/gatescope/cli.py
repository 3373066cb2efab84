"""The ``gatescope`` command (also ``python -m gatescope``).

Subcommands:
    ``run EXPERIMENT [--set KEY=VALUE ...] [--config FILE.toml] [--out DIR] [--force]
    [--jobs N] [--quiet]`` — run or finish an experiment (see
    :func:`gatescope.experiments.run_experiment`); ``list`` — cells, tasks with their
    baseline losses, optimizers, experiments and their settings; ``verify [--device D]
    [--dtype T]`` — check the analytic quantities against autograd on this machine;
    ``reproduce [--preset quick|paper] [--out DIR] [--force] [--seeds N] [--device D]
    [--jobs N] [--quiet]`` — every experiment of the paper, figures and report.

``--out`` must be a new or empty folder or one gatescope wrote (which is resumed); a
non-empty folder of other files is refused unless ``--force`` is given.

Exit codes: 0 success; 1 a run or a check failed; 2 bad usage, settings, output folder or
device (reported before any work starts). Each subcommand is a ``_add_NAME(subparsers)``
function that registers its parser and handler, so adding one touches nothing else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports the experiments lazily, to start fast
    from .experiments import OutputFolderError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Sequence length at which ``gatescope list`` reports the tasks' baseline losses.
LIST_SEQ_LEN = 80


def _error(message: str) -> None:
    print(f"gatescope: error: {message}", file=sys.stderr)


def _add_out(p: argparse.ArgumentParser, default: str) -> None:
    """``--out DIR`` and ``--force``."""
    p.add_argument("--out", metavar="DIR", help=f"output folder (default: {default}); a "
                   "rerun into it resumes")
    p.add_argument("--force", action="store_true", help="write into --out even if it is a "
                   "non-empty folder that gatescope did not make (its files of gatescope's "
                   "names are replaced)")


def _folder_error(err: OutputFolderError) -> int:
    """Report an :class:`~gatescope.experiments.OutputFolderError` as ``--out`` 's."""
    hint = "; use --force to write into it anyway" if err.forceable else ""
    _error(f"--out {err.folder!r}: {err.problem}{hint}")
    return EXIT_USAGE


# ---------------------------------------------------------------------- run


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an experiment (resumes a previous run in --out)",
                       description="Run an experiment; a rerun skips finished groups and "
                       "resumes interrupted ones from their last checkpoint.")
    p.add_argument("experiment", help="experiment name (see `gatescope list`)")
    p.add_argument("--set", dest="assignments", metavar="KEY=VALUE", nargs="+",
                   action="extend", default=[], help="override a setting (repeatable)")
    p.add_argument("--config", metavar="FILE", help="TOML file of settings (--set wins)")
    _add_out(p, "gatescope-results/EXPERIMENT")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="groups run in parallel worker processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(handler=_run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _run(args: argparse.Namespace) -> int:
    from .experiments import (
        OutputFolderError,
        RunError,
        RunLocked,
        SettingsError,
        build_settings,
        experiment_class,
        load_toml,
        parse_assignments,
        run_experiment,
    )

    try:
        cls = experiment_class(args.experiment)
        layers = [load_toml(args.config)] if args.config else []
        layers.append(parse_assignments(args.assignments))
        settings = build_settings(cls.settings_model, *layers, experiment=args.experiment)
    except SettingsError as err:
        for key, message in err.problems:
            _error(f"setting {key!r}: {message}")
        return EXIT_USAGE
    except ValueError as err:
        _error(str(err))
        return EXIT_USAGE
    try:
        result = run_experiment(args.experiment, settings, args.out, jobs=args.jobs,
                                quiet=args.quiet, force=args.force)
    except OutputFolderError as err:
        return _folder_error(err)
    except (RunError, RunLocked) as err:
        _error(str(err))
        return EXIT_FAILED
    print(f"{args.experiment}: {len(result.ran)} group(s) run, {len(result.skipped)} reused; "
          f"{result.rows} rows in {result.out / 'results.csv'}")
    return EXIT_OK


# ---------------------------------------------------------------------- list


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="cells, tasks (with baselines), optimizers, experiments; "
                       "`list metrics`: every metric with its definition")
    p.add_argument("what", nargs="?", choices=("metrics",),
                   help="metrics: every metric name, its axes, unit and definition")
    p.set_defaults(handler=_list)


def _list_metrics() -> int:
    from .metrics import list_metrics
    from .probes import get_quantity, list_quantities

    source = {m.name: q for q in map(get_quantity, list_quantities()) for m in q.metrics}
    print("metrics (results.csv `metric`, probe record keys); axes fill the named columns:")
    for m in list_metrics():
        axes = f"[{', '.join(m.axes)}]" if m.axes else "scalar"
        where = f"quantity {source[m.name].name}" if m.name in source else "experiment rows"
        print(f"  {m.name:<30} {axes:<24} unit {m.unit:<5} ({where})\n      {m.definition}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    if args.what == "metrics":
        return _list_metrics()
    from .cells import cell_class, list_cells
    from .experiments import experiment_class, list_experiments
    from .experiments.settings import describe_settings
    from .tasks import describe_tasks, make_task
    from .training import list_optimizers

    print("cells:")
    for name in list_cells():
        cls = cell_class(name)
        print(f"  {name:<14} {cls.__name__:<16} {cls.description}")
    print(f"\ntasks (baseline = loss of predicting the mean, at T={LIST_SEQ_LEN} and the "
          "smallest input size):")
    print(f"  {'name':<15} {'loss':<14} {'m':<8} {'baseline':>10}  description")
    for info in describe_tasks():
        task = make_task(info.name, seq_len=max(LIST_SEQ_LEN, info.min_seq_len))
        print(f"  {info.name:<15} {info.loss:<14} {info.input_size:<8} "
              f"{task.baseline_loss:>10.5g}  {info.description}")
    print(f"\noptimizers: {', '.join(list_optimizers())}")
    print("\nexperiments (gatescope run NAME --set KEY=VALUE):")
    for name in list_experiments():
        cls = experiment_class(name)
        print(f"  {name:<14} {cls.description}")
        for key, default, help_text in describe_settings(cls.settings_model):
            note = f"  # {help_text}" if help_text else ""
            print(f"      {key}={default}{note}")
    return EXIT_OK


# ---------------------------------------------------------------------- verify


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check the analytic quantities against autograd")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    try:
        from . import verify
    except ModuleNotFoundError as err:
        if err.name != "gatescope.verify":
            raise
        _error("this installation has no gatescope.verify module")
        return EXIT_FAILED
    try:
        return int(verify.main(device=args.device, dtype=args.dtype))
    except ValueError as err:  # an unknown or unavailable device, before any check
        _error(str(err))
        return EXIT_USAGE


# ---------------------------------------------------------------------- reproduce


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run every experiment of the paper and write the report",
                       description="Run the paper's experiments (expansion, profiles, "
                       "anisotropy) and the paper-code fidelity runs, draw every figure and "
                       "write REPORT.md and report.html. A rerun into the same folder resumes.")
    p.add_argument("--preset", choices=("quick", "paper"), default="quick",
                   help="quick: minutes on a laptop CPU (default); paper: the paper's "
                   "protocol with 20 seeds")
    _add_out(p, "gatescope-results/reproduce")
    p.add_argument("--seeds", type=_positive_int, metavar="N",
                   help="seeds of the main runs (default: the preset's)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="groups run in parallel worker processes (default: the CPU count)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(handler=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    from .experiments import OutputFolderError, RunError, RunLocked, SettingsError
    from .reproduce import DEFAULT_OUT, reproduce

    try:
        report = reproduce(args.preset, DEFAULT_OUT if args.out is None else args.out,
                           seeds=args.seeds, device=args.device, jobs=args.jobs,
                           quiet=args.quiet, force=args.force)
    except SettingsError as err:
        for key, message in err.problems:
            _error(f"setting {key!r}: {message}")
        return EXIT_USAGE
    except OutputFolderError as err:
        return _folder_error(err)
    except (RunError, RunLocked) as err:
        _error(str(err))
        return EXIT_FAILED
    print(f"report: {report} (and {report.with_name('report.html')})")
    return EXIT_OK


# ---------------------------------------------------------------------- main

SUBCOMMANDS = (_add_run, _add_list, _add_verify, _add_reproduce)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gatescope`` command."""
    parser = argparse.ArgumentParser(
        prog="gatescope",
        description="Measure how the gates of a recurrent network shape its training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse errors exit with 2)."""
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gatescope: %(message)s"))
    log = logging.getLogger("gatescope")
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        return args.handler(args)
    except BrokenPipeError:  # e.g. `gatescope list | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
