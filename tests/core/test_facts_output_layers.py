"""Fact: which parametrised layers' outputs are model outputs or loss inputs (core/facts.py)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.core import ActivationMonitor


class Pooled(nn.Module):
    """A BERT-style pooler: tanh on the first token, dropout, a classifier; the loss reads the
    classifier's logits after a view, computed inside the forward (as Hugging Face models do)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 8))
        self.pooler, self.act, self.drop, self.classifier = nn.Linear(8, 8), nn.Tanh(), nn.Dropout(0.1), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        logits = self.classifier(self.drop(self.act(self.pooler(h[:, 0]))))
        return {"loss": F.cross_entropy(logits.view(-1, 3), y), "logits": logits}


def _snapshot(model: nn.Module, run) -> object:
    mon = ActivationMonitor(model).attach()
    for step in range(3):
        mon.begin_step(detail=step == 0)
        run().backward()
        mon.end_step()
    snap = mon.snapshot()
    mon.detach()
    return snap


def test_a_loss_inside_the_forward_names_the_classifier_through_a_view():
    torch.manual_seed(0)
    model = Pooled()
    snap = _snapshot(model, lambda: model(torch.randn(4, 5, 6), torch.randint(0, 3, (4,)))["loss"])
    assert snap.output_layers == ("classifier",)
    assert snap.sites["act"].consumers == {"classifier"}


def test_a_returned_layer_output_and_a_loss_outside_the_model():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    snap = _snapshot(mlp, lambda: F.cross_entropy(mlp(torch.randn(16, 4)), torch.randint(0, 2, (16,))))
    assert snap.output_layers == ("4",)  # not the hidden layers "0" and "2"


def test_an_activation_output_is_no_output_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
    snap = _snapshot(model, lambda: F.binary_cross_entropy(model(torch.randn(16, 4)), torch.rand(16, 1)))
    # The loss reads the sigmoid's output: no parametrised layer's output leaves the model as is.
    assert snap.output_layers == ()
