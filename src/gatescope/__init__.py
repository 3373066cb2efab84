"""gatescope: how the gates of a recurrent network shape its training."""

from .cells import (
    RecurrentCell,
    Trajectory,
    cell_class,
    list_cells,
    make_cell,
    register_cell,
)
from .dynamics.jacobians import (
    jacobian_split,
    jacobian_split_autograd,
    jacobians,
    jacobians_autograd,
)

__version__ = "0.1.0"
