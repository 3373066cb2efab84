"""Reporting: figures and reports drawn from measured results (never computing them).

It reads results tables and plain descriptions only, and imports numpy, matplotlib, its own
modules, :mod:`gatescope.atomic` and :mod:`gatescope.paper` (the ``lint-imports``
contracts in pyproject.toml).

Importing a figure module selects matplotlib's non-interactive Agg backend, so this package
is not imported by ``import gatescope``.
"""
