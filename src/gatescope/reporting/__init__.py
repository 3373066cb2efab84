"""Reporting: figures and reports drawn from measured results (never computing them).

Importing a figure module selects matplotlib's non-interactive Agg backend, so this package
is not imported by ``import gatescope``.
"""
