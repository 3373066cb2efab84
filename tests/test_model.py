"""SequenceModel readouts and losses."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import gatescope as gs


def test_readouts_and_losses():
    cell = gs.make_cell("multi_gate", 3, 4)
    u, y = torch.randn(5, 6, 3), torch.randn(5)
    last = gs.SequenceModel(cell, 1)
    assert [k for k, _ in last.named_children()] == ["cell", "readout"]
    pred = last(u)
    assert pred.shape == (5, 1)
    torch.testing.assert_close(last.loss(u, y), F.mse_loss(pred, y[:, None]))

    every = gs.SequenceModel(cell, 3, readout="all", loss="cross_entropy")
    labels = torch.randint(0, 3, (5, 6))
    logits = every(u)
    assert logits.shape == (5, 6, 3)
    torch.testing.assert_close(every.loss(u, labels), F.cross_entropy(logits.reshape(-1, 3),
                                                                      labels.reshape(-1)))
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[:, -2:] = True
    ref = F.cross_entropy(logits[:, -2:].reshape(-1, 3), labels[:, -2:].reshape(-1))
    torch.testing.assert_close(every.loss(u, labels, mask), ref)


def test_lstm_readout_reads_h_not_c():
    cell = gs.make_cell("lstm", 2, 3)
    model = gs.SequenceModel(cell, 1)
    u = torch.randn(2, 4, 2)
    states = cell.unroll(u).states
    torch.testing.assert_close(model(u), model.readout(states[:, -1, :3]))


def test_bad_settings():
    cell = gs.make_cell("plain", 2, 3)
    with pytest.raises(ValueError, match="readout"):
        gs.SequenceModel(cell, readout="first")
    with pytest.raises(ValueError, match="loss"):
        gs.SequenceModel(cell, loss="l1")


def test_shape_mistakes_are_named():
    cell = gs.make_cell("lstm", 2, 3)
    u = torch.randn(4, 5, 2)
    with pytest.raises(ValueError, match="h0"):
        cell.unroll(u, torch.zeros(4, 3))  # an LSTM state is [h; c]
    last = gs.SequenceModel(cell, 1)
    with pytest.raises(ValueError, match="y must"):
        last.loss(u, torch.randn(4, 5))
    with pytest.raises(ValueError, match="mask"):
        last.loss(u, torch.randn(4, 1), torch.ones(4, 5, dtype=torch.bool))
    every = gs.SequenceModel(cell, 3, readout="all", loss="cross_entropy")
    with pytest.raises(ValueError, match="class indices"):
        every.loss(u, torch.randint(0, 3, (4,)))
    with pytest.raises(ValueError, match="J must"):
        gs.sensitivities(torch.randn(4, 5, 3))
