"""The oracles' building blocks, checked on tensors and models whose answer is known by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from corpus_kit import (
    first_layer_input,
    is_affine,
    never_firing_share,
    parameter_grads_all_zero,
    producer,
    rows_sum_to_one,
    standardised,
)

pytestmark = pytest.mark.corpus


def _logits() -> torch.Tensor:
    return nn.Linear(4, 3)(torch.randn(5, 4))


def test_producer_sees_through_clamps_epsilons_logs_and_row_sums():
    z = _logits()
    assert producer(torch.softmax(z, 1).clamp(1e-7, 1 - 1e-7)) == "softmax"
    assert producer(torch.log(torch.sigmoid(z) + 1e-8)) == "sigmoid"
    p = F.relu(z)
    assert producer(p / (p.sum(1, keepdim=True) + 1e-8)) == "relu"
    assert producer(torch.cat([1 - torch.tanh(z), torch.tanh(z)], 1)) == "tanh"


def test_producer_stops_at_a_layer():
    hidden = torch.relu(_logits())
    assert producer(nn.Linear(3, 2)(hidden)) is None  # the ReLU feeds a layer; the output is logits
    assert producer(_logits()) is None


def test_rows_sum_to_one():
    assert rows_sum_to_one(torch.softmax(torch.randn(6, 3), 1))
    assert not rows_sum_to_one(torch.sigmoid(torch.randn(6, 3)))


def test_parameter_grads_all_zero_only_for_a_constant_output():
    layer = nn.Linear(4, 1)
    x = torch.randn(8, 4)
    assert parameter_grads_all_zero(layer, torch.softmax(layer(x), 1).sum())  # always 1.0
    assert not parameter_grads_all_zero(layer, torch.sigmoid(layer(x)).sum())


def test_is_affine():
    assert is_affine(nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5), nn.Linear(5, 2)), 3)
    assert is_affine(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Linear(2, 2)), (1, 2, 2))
    assert not is_affine(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)), 3)
    assert not is_affine(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)), 3)


def test_never_firing_share_counts_units_dead_on_every_row():
    layer = nn.Linear(2, 4)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor([1.0, -1.0, -1.0, 0.0]))  # unit 0 fires; 1, 2 and 3 never do
    model = nn.Sequential(layer, nn.ReLU())
    assert never_firing_share(model, torch.randn(10, 2)) == {"1": 0.75}


def test_first_layer_input_is_what_the_first_matrix_product_received():
    x = torch.randn(7, 3) * 1000
    norm = nn.BatchNorm1d(3)
    model = nn.Sequential(norm, nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    received = first_layer_input(model(x))
    assert torch.allclose(received, norm(x)) and received.std(0).max() < 2
    w = torch.randn(3, 2, requires_grad=True)
    assert torch.equal(first_layer_input(torch.sigmoid(x @ w) @ torch.randn(2, 1, requires_grad=True)), x)


def test_standardised_columns():
    x = torch.randn(50, 3) * torch.tensor([1.0, 100.0, 5000.0]) + 7
    z = standardised(x)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5) and torch.allclose(z.std(0), torch.ones(3), atol=1e-5)
