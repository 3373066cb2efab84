"""Recurrent cells: explicit tensor programs with analytic Jacobians where one exists."""

# isort: off
# Importing the cell modules registers the cells, in the order of docs/maths.md#cells.
from . import plain, leaky, gated, gru, lstm, min_gru, min_lstm, lru, rg_lru, mamba  # noqa: F401

# isort: on
from .base import RecurrentCell, Trajectory
from .gated import MultiGateCell, ScalarGateCell
from .gru import GRUCell
from .leaky import LeakyCell
from .lru import LRUCell
from .lstm import LSTMCell
from .mamba import MambaCell
from .min_gru import MinGRUCell
from .min_lstm import MinLSTMCell
from .plain import PlainCell
from .registry import cell_class, list_cells, make_cell, register_cell
from .residual import ResidualCell
from .rg_lru import RGLRUCell
from .stack import StackedCell
from .update_gate import RetentionGate, init_update_gate, retention_gate

__all__ = [
    "GRUCell", "LRUCell", "LSTMCell", "LeakyCell", "MambaCell", "MinGRUCell", "MinLSTMCell",
    "MultiGateCell", "PlainCell", "RGLRUCell", "RecurrentCell", "ResidualCell",
    "RetentionGate", "ScalarGateCell", "StackedCell", "Trajectory", "cell_class",
    "init_update_gate", "list_cells", "make_cell", "register_cell", "retention_gate",
]
