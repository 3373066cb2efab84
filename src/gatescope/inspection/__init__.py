"""``gatescope inspect``: a one-call report of how a trained recurrent model uses time.

* :func:`inspect` (``gs.inspect``) — the analysis and its report (:mod:`.api`);
* :func:`load_state_dict`, :func:`recognise`, :func:`module_from_state_dict` — a weights file
  to the torch module it came from (:mod:`.weights`);
* :func:`load_array`, :func:`check_inputs` — a data file to checked inputs (:mod:`.data`);
* the declared quantities it measures through (:mod:`.quantities`).

Every problem with a file or setting raises :class:`InspectInputError` (a ``ValueError``)
before any compute; the command line prints it in one line and exits with code 2.
"""

from .api import AnalysisUnit, InspectResult, inspect, module_units
from .data import check_inputs, load_array
from .errors import InspectInputError
from .weights import ModuleSpec, load_state_dict, module_from_state_dict, recognise

__all__ = [
    "AnalysisUnit",
    "InspectInputError",
    "InspectResult",
    "ModuleSpec",
    "check_inputs",
    "inspect",
    "load_array",
    "load_state_dict",
    "module_from_state_dict",
    "module_units",
    "recognise",
]
