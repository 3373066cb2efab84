"""gatescope: how the gates of a recurrent network shape its training."""

from .cells import (
    RecurrentCell,
    Trajectory,
    cell_class,
    list_cells,
    make_cell,
    register_cell,
)
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

__version__ = "0.1.0"
