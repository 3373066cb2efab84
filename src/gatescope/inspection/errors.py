"""The one error type of ``gatescope inspect``'s input checks."""

from __future__ import annotations


class InspectInputError(ValueError):
    """A weights file, data file or setting that ``gatescope inspect`` cannot use.

    The message is one line naming the file or argument and the problem; the command line
    prints it and exits with code 2, before any compute.
    """
