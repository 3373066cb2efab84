"""Probes for a training loop: record, save, reload and plot what the gates do while training.

A multi_gate cell learns the adding problem with Adam for 50 steps; a probe with the "full"
preset records the loss, gates, effective learning rates, Adam's step sizes, the sensitivity
profile and the anisotropy of transport and updates on a fixed probe batch every 10 steps.

Run: ``python examples/probe_training_loop.py [--out DIR]`` (a few seconds on a laptop CPU;
without ``--out`` the files go to a temporary folder that is removed at exit).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import gatescope as gs
from gatescope.probes import Probe, Schedule, load_probe
from gatescope.reporting.probe_figures import plot_probe

STEPS, SEQ_LEN, HIDDEN, INPUTS, BATCH, PROBE_BATCH = 50, 30, 16, 4, 32, 16


def train_with_probe(out: Path) -> None:
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    task = gs.make_task("adding", seq_len=SEQ_LEN, input_size=INPUTS)
    model = gs.SequenceModel(gs.make_cell("multi_gate", INPUTS, HIDDEN), output_size=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    u_probe, y_probe = task.sample(PROBE_BATCH, data)  # fixed, never trained on
    probe = Probe(model, u_probe, y_probe, optimizer=optimizer, quantities="full",
                  schedule=Schedule.every(10), lags=(1, 2, 4, 8, 16))

    probe(0)  # the initial model
    for step in range(1, STEPS + 1):
        u, y = task.sample(BATCH, data)
        optimizer.zero_grad()
        model.loss(u, y).backward()
        optimizer.step()
        probe(step)  # the model after `step` updates; records at 10, 20, ...

    json_path, npz_path = probe.save(out / "probe")
    results = load_probe(json_path)
    assert all(np.array_equal(results[k], v, equal_nan=True) for k, v in probe.history.items())
    figures = plot_probe(results, out / "figures")

    h = results.history
    print(f"recorded steps {results.steps.tolist()}; {len(h)} arrays -> {json_path.name}, "
          f"{npz_path.name} (reloaded, identical)")
    print(f"probe loss {h['probe_loss'][0]:.4f} -> {h['probe_loss'][-1]:.4f} "
          f"(chance level {task.baseline_loss:.4f})")
    print(f"mean retention {h['retention_per_neuron'][0].mean():.3f} -> "
          f"{h['retention_per_neuron'][-1].mean():.3f}; "
          f"envelope f(16) {h['envelope'][-1, -1]:.2e}")
    print(f"Adam step sizes: cv {h['step_cv'][-1]:.2f}, "
          f"AI_10 {h['step_ai'][-1]:.2f} (skipped at step 0: "
          f"{list(results.notes.get('optimizer_steps', {}))})")
    print(f"profile fit slope s: update {h['fit_slope'][-1, 0]:.3f}, "
          f"retention {h['fit_slope'][-1, 1]:.3f}; "
          f"update anisotropy AI_10 {h['gradcov_ai'][-1]:.2f}")
    print(f"figures: {', '.join(sorted(figures))} in {out / 'figures'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.out is None:
        with tempfile.TemporaryDirectory() as tmp:
            train_with_probe(Path(tmp))
    else:
        train_with_probe(args.out)
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
