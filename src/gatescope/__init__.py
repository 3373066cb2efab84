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
from .model import SequenceModel
from .tasks import Task, describe_tasks, list_tasks, make_task, register_task

__version__ = "0.1.0"

__all__ = [
    "Expansion",
    "RecurrentCell",
    "SequenceModel",
    "Task",
    "Trajectory",
    "__version__",
    "cell_class",
    "describe_tasks",
    "first_order_expansion",
    "from_torch",
    "jacobian_split",
    "jacobian_split_autograd",
    "jacobians",
    "jacobians_autograd",
    "lag_gradients",
    "list_cells",
    "list_tasks",
    "make_cell",
    "make_task",
    "register_cell",
    "register_task",
    "sensitivities",
    "transport",
]
