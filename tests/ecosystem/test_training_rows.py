"""compat.train_rows: the training set counts as a finite population of rows only where each
epoch draws every row once, in a random order (what dead-units' finite-population bound assumes)."""

from __future__ import annotations

import types

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler, TensorDataset

from act_diagnostics.callbacks import compat

DATA = TensorDataset(torch.zeros(120, 3))


class _Stream(IterableDataset):
    def __iter__(self):
        yield from (torch.zeros(3) for _ in range(120))


def _trainer(loader) -> types.SimpleNamespace:
    return types.SimpleNamespace(train_dataloader=loader, current_epoch=2)


LOADERS = [
    ("shuffled", lambda: DataLoader(DATA, batch_size=5, shuffle=True), 120),
    ("shuffled, last batch dropped", lambda: DataLoader(DATA, batch_size=7, shuffle=True, drop_last=True), 120),
    ("DDP's shuffling sampler", lambda: DataLoader(DATA, sampler=DistributedSampler(DATA, num_replicas=2, rank=0)), 120),
    ("file order", lambda: DataLoader(DATA, batch_size=5), None),
    ("DDP in file order", lambda: DataLoader(DATA, sampler=DistributedSampler(DATA, num_replicas=2, rank=0, shuffle=False)), None),
    ("with replacement", lambda: DataLoader(DATA, sampler=RandomSampler(DATA, replacement=True)), None),
    ("a fixed number of draws", lambda: DataLoader(DATA, sampler=RandomSampler(DATA, num_samples=50)), None),
    ("an iterable data set", lambda: DataLoader(_Stream(), batch_size=5), None),
    ("several loaders", lambda: [DataLoader(DATA, shuffle=True)] * 2, None),
    ("no loader (a stub trainer)", lambda: None, None),
]


@pytest.mark.parametrize("make,rows", [c[1:] for c in LOADERS], ids=[c[0] for c in LOADERS])
def test_train_rows(make, rows):
    assert compat.train_rows(_trainer(make())) == rows


def test_a_custom_batch_sampler_is_not_assumed_to_draw_every_row_once():
    class Repeating(BatchSampler):
        pass

    loader = DataLoader(DATA, batch_sampler=Repeating(RandomSampler(DATA), batch_size=5, drop_last=False))
    assert compat.train_rows(_trainer(loader)) is None


def test_epoch():
    assert compat.epoch(_trainer(None)) == 2 and compat.epoch(object()) is None
