"""The ``gatescope`` command (also ``python -m gatescope``).

Subcommands:
    ``run EXPERIMENT [--set KEY=VALUE ...] [--config FILE.toml] [--out DIR] [--force]
    [--jobs N] [--backend local|ray [--address ADDR]] [--quiet]`` — run or finish an experiment (see
    :func:`gatescope.experiments.run_experiment`); ``list`` — cells, tasks with their
    baseline losses, optimizers, experiments and their settings; ``verify [--device D]
    [--dtype T]`` — check the analytic quantities against autograd on this machine;
    ``reproduce [--paper seed|learnability|anticollapse] [--preset quick|paper] [--out DIR]
    [--force] [--seeds N] [--device D] [--jobs N] [--backend local|ray [--address ADDR]]
    [--quiet]`` — every experiment of the paper (or of a follow-up), figures and report;
    ``inspect WEIGHTS --data FILE [--prefix P] [--key K] [--out DIR] [--time-first] ...`` —
    how a trained model's recurrent module uses time on your data (see
    :func:`gatescope.inspect`).

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


def _add_backend(p: argparse.ArgumentParser) -> None:
    """``--backend local|ray`` and ``--address ADDR``."""
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where groups run: local worker processes (default) or Ray tasks "
                   "(needs gatescope[ray]); either resumes the other's run")
    p.add_argument("--address", metavar="ADDR", help="the Ray cluster to join, e.g. "
                   "HEAD:6379 or auto (--backend ray; default: RAY_ADDRESS, else a new local "
                   "Ray instance)")


def _backend_usage(args: argparse.Namespace) -> int | None:
    """Exit 2 (before any work) for ``--address`` without Ray, or Ray not installed."""
    from .experiments.runner import BackendError, check_backend

    try:
        check_backend(args.backend, args.address)
    except BackendError as err:
        _error(str(err).replace("address is only", "--address is only"))
        return EXIT_USAGE
    return None


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
                   help="groups run in parallel worker processes or Ray tasks (default 1)")
    _add_backend(p)
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
    if (code := _backend_usage(args)) is not None:
        return code
    try:
        result = run_experiment(args.experiment, settings, args.out, jobs=args.jobs,
                                quiet=args.quiet, force=args.force, backend=args.backend,
                                address=args.address)
    except OutputFolderError as err:
        return _folder_error(err)
    except (RunError, RunLocked) as err:
        _error(str(err))
        return EXIT_FAILED
    print(f"{args.experiment}: {len(result.ran)} group(s) run, {len(result.skipped)} reused; "
          f"{result.rows} rows in {result.out / 'results.csv'}")
    from .reporting.run_reports import write_run_report

    report = write_run_report(args.experiment, result.out)
    if report is not None:
        print(f"report: {report}")
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
    p.add_argument("--paper", choices=("seed", "learnability", "anticollapse"), default="seed",
                   help="seed: the paper's experiments (default); learnability, "
                   "anticollapse: a follow-up's experiment and its verdicts "
                   "(docs/followups.md)")
    p.add_argument("--preset", choices=("quick", "paper"), default="quick",
                   help="quick: minutes on a laptop CPU (default); paper: the paper's "
                   "protocol with 20 seeds (a follow-up's: its protocol)")
    _add_out(p, "gatescope-results/reproduce (a follow-up: gatescope-results/PAPER)")
    p.add_argument("--seeds", type=_positive_int, metavar="N",
                   help="seeds of the main runs (default: the preset's)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="groups run in parallel worker processes or Ray tasks (default: the "
                   "CPU count)")
    _add_backend(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(handler=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    from .experiments import OutputFolderError, RunError, RunLocked, SettingsError
    from .reproduce import DEFAULT_OUT, reproduce, reproduce_followup

    if (code := _backend_usage(args)) is not None:
        return code
    options = dict(seeds=args.seeds, device=args.device, jobs=args.jobs, quiet=args.quiet,
                   force=args.force, backend=args.backend, address=args.address)
    try:
        if args.paper == "seed":
            report = reproduce(args.preset, DEFAULT_OUT if args.out is None else args.out,
                               **options)
        else:
            report = reproduce_followup(args.paper, args.preset, args.out, **options)
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


# ---------------------------------------------------------------------- inspect


def _lookback_probes(text: str) -> int | str | None:
    if text in ("auto", "exact"):
        return None if text == "exact" else "auto"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'exact' or an integer >= 1, "
                                         f"got {text!r}") from None


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="how a trained recurrent model uses time, on your data",
        description="Recognise the recurrent module of a state_dict (.pt read with "
        "weights_only=True, never unpickling objects; .safetensors with the [inspect] extra) "
        "and report, per layer and direction, its gates' time-scale spectrum, the envelope "
        "of the effective rates with its decay class, how far back the output looks and a "
        "memory horizon, the rate dispersion across neurons and gate saturation: REPORT.md, "
        "report.html, inspect.json and PNG figures in --out. Bad files or inputs exit 2.")
    p.add_argument("weights", metavar="WEIGHTS", help="state_dict file: .pt/.pth or "
                   ".safetensors")
    p.add_argument("--data", required=True, metavar="FILE", help="inputs: .npy, .npz or .pt "
                   "holding a (B, T, m) array (batch first; see --time-first)")
    p.add_argument("--key", metavar="K", help="the array of an .npz (or a dict in a .pt) to "
                   "use, when it holds several")
    p.add_argument("--prefix", metavar="P", help="key prefix of the recurrent module in "
                   "WEIGHTS (e.g. encoder.rnn); found automatically when there is one")
    p.add_argument("--nonlinearity", choices=("tanh", "relu"), default="tanh",
                   help="an nn.RNN's nonlinearity, which its weights cannot tell (default tanh)")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--batch-first", dest="batch_first", action="store_true",
                        default=True, help="the data is (B, T, m) (default)")
    layout.add_argument("--time-first", dest="batch_first", action="store_false",
                        help="the data is (T, B, m), torch's batch_first=False layout")
    p.add_argument("--out", metavar="DIR", default="gatescope-inspect",
                   help="report folder (default: gatescope-inspect); its report files are "
                   "replaced")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="compute dtype (default: the weights')")
    p.add_argument("--max-sequences", type=_positive_int, metavar="N",
                   help="analyse at most N sequences, drawn with --seed (default: all)")
    p.add_argument("--end-times", type=_positive_int, default=16, metavar="N",
                   help="sampled end times of the effective rates (default 16)")
    p.add_argument("--rate-lags", type=_positive_int, default=24, metavar="N",
                   help="log-spaced lags of the rate dispersion (default 24)")
    p.add_argument("--transport-lags", type=int, default=8, metavar="N",
                   help="log-spaced lags of the matrix-free transport norms, up to min(T/2, "
                   "256); 0: not measured (default 8)")
    p.add_argument("--lyapunov", type=int, default=8, metavar="K",
                   help="how many Lyapunov exponents; 0: not measured (default 8)")
    p.add_argument("--lookback-probes", type=_lookback_probes, default="auto",
                   metavar="auto|exact|K", help="output lookback: exact (n directions) or K "
                   "Gaussian directions; auto: exact for n <= 64, else 16 (default)")
    p.add_argument("--horizon-threshold", type=float, default=0.01, metavar="X",
                   help="memory horizon: the longest lag whose lookback is >= X times its "
                   "peak (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    import torch

    from .inspection import (
        InspectInputError,
        check_inputs,
        inspect,
        load_array,
        load_state_dict,
        module_from_state_dict,
    )

    try:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise InspectInputError(f"--out {args.out!r}: exists and is not a folder")
        state_dict = load_state_dict(args.weights)
        module, spec = module_from_state_dict(state_dict, args.prefix, args.nonlinearity)
        data = load_array(args.data, args.key)
        dtype = None if args.dtype is None else getattr(torch, args.dtype)
        check_inputs(data, spec.input_size, args.batch_first,  # named as the file, up front
                     dtype or next(module.parameters()).dtype, name=f"--data {args.data!r}")
        result = inspect(module, data, out=args.out, batch_first=args.batch_first,
                         end_times=args.end_times, rate_lags=args.rate_lags,
                         lookback_probes=args.lookback_probes,
                         transport_lags=args.transport_lags, lyapunov_count=args.lyapunov,
                         horizon_threshold=args.horizon_threshold,
                         max_sequences=args.max_sequences, seed=args.seed,
                         device=args.device, dtype=dtype, quiet=args.quiet,
                         module_description=spec.describe())
    except InspectInputError as err:
        _error(str(err))
        return EXIT_USAGE
    files = result.files
    print(f"inspect: {spec.describe()}, {result.summary['sampled']['batch']} sequences of "
          f"T = {result.summary['sampled']['seq_len']}; report: {files['markdown']} (and "
          f"{files['html'].name}, {files['json'].name})")
    return EXIT_OK


# ---------------------------------------------------------------------- main

SUBCOMMANDS = (_add_run, _add_list, _add_verify, _add_reproduce, _add_inspect)


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
