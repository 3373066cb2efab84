"""gatescope: how the gates of a recurrent network shape its training.

The public names (docs/README.md#public-names) live here; see the subpackages for the rooms
they come
from (``cells``, ``dynamics``, ``tasks``).

``import gatescope`` loads the analysis API only. The experiment API
(:func:`run_experiment`, :func:`list_experiments`, :func:`register_experiment`) is loaded
on first use, with its pydantic settings and its process pool (PEP 562).
"""

from .cells import (
    RecurrentCell,
    ResidualCell,
    StackedCell,
    Trajectory,
    cell_class,
    list_cells,
    make_cell,
    register_cell,
)
from .convert import from_torch, layer_inputs
from .dynamics.expansion import Expansion, first_order_expansion
from .dynamics.jacobians import (
    jacobian_split,
    jacobian_split_autograd,
    jacobians,
    jacobians_autograd,
)
from .dynamics.lag_gradients import lag_gradients
from .dynamics.lyapunov import gate_time_scale_exponents, lyapunov_exponents
from .dynamics.matrix_free import TransportNorms, transport_norms
from .dynamics.transport import sensitivities, transport
from .measures import (
    RateSummary,
    effective_learning_rates,
    effective_rate_summary,
    envelope,
    fit_power,
    gate_product,
    gates_vs_optimizer,
    optimizer_step_sizes,
    per_example_gradients,
    profile_fit,
    propagation_anisotropy,
    sensitivity_profile,
    spectrum_stats,
    step_size_dispersion,
    transport_alignment,
    update_anisotropy,
)
from .memory import DenseBudgetExceeded, dense_budget, dense_budget_limit, set_dense_budget
from .metrics import Metric, declare_metric, get_metric, list_metrics
from .model import SequenceModel
from .probes import (
    Probe,
    ProbeResults,
    Schedule,
    SkipQuantity,
    list_quantities,
    load_probe,
    register_quantity,
)
from .tasks import Task, describe_tasks, list_tasks, make_task, register_task
from .training import EnsembleTrainer, list_optimizers, make_optimizer

__version__ = "0.1.0"

#: Names served from :mod:`gatescope.experiments`, imported on first access.
_EXPERIMENT_API = ("list_experiments", "register_experiment", "run_experiment")
#: Names served from :mod:`gatescope.inspection` (it loads matplotlib), on first access.
_INSPECT_API = ("inspect",)


def __getattr__(name: str):
    if name in _EXPERIMENT_API or name in _INSPECT_API:
        from importlib import import_module

        where = "experiments" if name in _EXPERIMENT_API else "inspection"
        value = getattr(import_module(f".{where}", __name__), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPERIMENT_API, *_INSPECT_API})

__all__ = [
    "DenseBudgetExceeded",
    "EnsembleTrainer",
    "Expansion",
    "Metric",
    "Probe",
    "ProbeResults",
    "RateSummary",
    "RecurrentCell",
    "ResidualCell",
    "Schedule",
    "SequenceModel",
    "SkipQuantity",
    "StackedCell",
    "Task",
    "Trajectory",
    "TransportNorms",
    "__version__",
    "cell_class",
    "declare_metric",
    "dense_budget",
    "dense_budget_limit",
    "describe_tasks",
    "effective_learning_rates",
    "effective_rate_summary",
    "envelope",
    "first_order_expansion",
    "fit_power",
    "from_torch",
    "gate_product",
    "gate_time_scale_exponents",
    "gates_vs_optimizer",
    "get_metric",
    "inspect",
    "jacobian_split",
    "jacobian_split_autograd",
    "jacobians",
    "jacobians_autograd",
    "lag_gradients",
    "layer_inputs",
    "list_cells",
    "list_experiments",
    "list_metrics",
    "list_optimizers",
    "list_quantities",
    "list_tasks",
    "load_probe",
    "lyapunov_exponents",
    "make_cell",
    "make_optimizer",
    "make_task",
    "optimizer_step_sizes",
    "per_example_gradients",
    "profile_fit",
    "propagation_anisotropy",
    "register_cell",
    "register_experiment",
    "register_quantity",
    "register_task",
    "run_experiment",
    "sensitivities",
    "set_dense_budget",
    "sensitivity_profile",
    "spectrum_stats",
    "step_size_dispersion",
    "transport",
    "transport_alignment",
    "transport_norms",
    "update_anisotropy",
]
