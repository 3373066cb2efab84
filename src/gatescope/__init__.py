"""gatescope: how the gates of a recurrent network shape its training.

The public names of DESIGN.md §7 live here; see the subpackages for the rooms they come
from (``cells``, ``dynamics``, ``tasks``).
"""

from .cells import (
    RecurrentCell,
    Trajectory,
    cell_class,
    list_cells,
    make_cell,
    register_cell,
)
from .convert import from_torch
from .dynamics.expansion import Expansion, first_order_expansion
from .dynamics.jacobians import (
    jacobian_split,
    jacobian_split_autograd,
    jacobians,
    jacobians_autograd,
)
from .dynamics.lag_gradients import lag_gradients
from .dynamics.transport import sensitivities, transport
from .measures import (
    effective_learning_rates,
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

#: Names served from ``gatescope.experiments`` on first use, so that ``import gatescope``
#: does not import pydantic (only the experiments' settings need it).
_EXPERIMENT_NAMES = ("list_experiments", "register_experiment", "run_experiment")


def __getattr__(name: str):
    if name in _EXPERIMENT_NAMES:
        from . import experiments

        return getattr(experiments, name)
    raise AttributeError(f"module 'gatescope' has no attribute {name!r}")

__all__ = [
    "EnsembleTrainer",
    "Expansion",
    "Probe",
    "ProbeResults",
    "RecurrentCell",
    "Schedule",
    "SequenceModel",
    "SkipQuantity",
    "Task",
    "Trajectory",
    "__version__",
    "cell_class",
    "describe_tasks",
    "effective_learning_rates",
    "envelope",
    "first_order_expansion",
    "fit_power",
    "from_torch",
    "gate_product",
    "gates_vs_optimizer",
    "jacobian_split",
    "jacobian_split_autograd",
    "jacobians",
    "jacobians_autograd",
    "lag_gradients",
    "list_cells",
    "list_experiments",
    "list_optimizers",
    "list_quantities",
    "list_tasks",
    "load_probe",
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
    "sensitivity_profile",
    "spectrum_stats",
    "step_size_dispersion",
    "transport",
    "transport_alignment",
    "update_anisotropy",
]
