"""Dynamics: Jacobians and their split, transport products and sensitivities, lag-resolved
gradients, the first-order expansion (see each module)."""
