"""Quickstart: exact Jacobians, transport sensitivities and lag-resolved gradients.

Run: ``python examples/quickstart.py`` (a few seconds on a laptop CPU).
"""

import torch

import gatescope as gs

torch.manual_seed(0)
task = gs.make_task("adding", seq_len=40, input_size=4)
u, y = task.sample(16, torch.Generator().manual_seed(0))

cell = gs.make_cell("multi_gate", input_size=4, hidden_size=32)
model = gs.SequenceModel(cell, output_size=1, readout="last", loss="mse")

with torch.no_grad():
    traj = cell.unroll(u)
J = gs.jacobians(cell, traj)                 # (B, T, n, n), J[:, t-1] = ∂h_t/∂h_{t-1}
A, B = gs.jacobian_split(cell, traj)         # time-scale part and gate-induced part
err = (J - gs.jacobians_autograd(cell, traj)).abs().max().item()
print(f"analytic vs torch.func Jacobians: max |diff| = {err:.1e}")

S = gs.sensitivities(J)                      # (B, T+1, T+1), exact spectral norms
for lag in (1, 5, 10, 20, 39):
    print(f"median ‖M_(t,t-{lag})‖_2 = {S.diagonal(-lag, 1, 2).median():.3e}")

parts = gs.lag_gradients(model, u, y)        # {name: (T, *shape)}
loss = model.loss(u, y)
grads = torch.autograd.grad(loss, list(model.parameters()))
for (name, _), g in zip(model.named_parameters(), grads, strict=True):
    rel = ((parts[name].sum(0) - g).norm() / g.norm()).item()
    print(f"{name:28s} Σ_ℓ G_ℓ vs autograd: rel. error {rel:.1e}")
share = parts["cell.recurrent.weight"].flatten(1).norm(dim=1)
print("share of ‖G_ℓ‖ for W_r in lags 0-4:", (share[:5].sum() / share.sum()).item())

ex = gs.first_order_expansion(A[:1, :20].double(), B[:1, :20].double())
print(f"first-order expansion over 20 steps: small-ε slope {ex.slope.item():.3f}")
