"""What every corpus program is made of: the Program record, tiny data sets built in code, a shared
LightningModule base, and the plain-torch helpers the oracles use.

Nothing here imports act_diagnostics: the oracles must confirm each fault without the project's code.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

try:  # the flavour `from act_diagnostics import ActivationDiagnostics` watches
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - only the lightning package installed
    import lightning.pytorch as pl

SERIOUS = ("warning", "error")
EPS = 1e-7  # Keras's backend epsilon: the clip users port with their losses


# ----------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class Program:
    """One real-style program with its buggy and fixed variant.

    ``build(buggy)`` returns a fresh LightningModule (with its own ``train_dataloader``);
    ``oracle(module)`` answers, with plain torch only, whether the fault is present in it.
    ``rules``: the rule ids that name the fault (the first is the one meant; a second only where the
    fault honestly belongs to either). ``site``: the site the finding must name, or None.
    ``residual``: rule id -> plain-torch oracle, for faults the fixed variant knowingly keeps (the
    fixed variant may raise that rule only while its oracle confirms the fault).
    ``buggy_xfail`` / ``fixed_xfail``: why today's code gets that variant wrong (strict xfail).
    ``csv_logger``: train with a CSVLogger (else ``logger=False``, as scripts without logging do).
    """

    name: str
    story: str
    build: Callable[[bool], pl.LightningModule]
    rules: tuple[str, ...]
    oracle: Callable[[pl.LightningModule], bool]
    site: str | None = None
    steps: int = 30
    csv_logger: bool = True
    residual: dict[str, Callable[[pl.LightningModule], bool]] = field(default_factory=dict)
    buggy_xfail: str | None = None
    fixed_xfail: str | None = None


# ----------------------------------------------------------------------------- data sets
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(n: int = 150, d: int = 4, classes: int = 3, seed: int = 0, spread: float = 1.0) -> tuple[Tensor, Tensor]:
    """Iris-like: one Gaussian cloud per class around its own centre (separable, not trivially)."""
    g = _gen(seed)
    centres = torch.randn(classes, d, generator=g) * 2.0
    y = torch.arange(n) % classes
    return centres[y] + spread * torch.randn(n, d, generator=g), y


def circles(n: int = 256, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two rings (inner class 1): no straight line separates them."""
    g = _gen(seed)
    y = (torch.arange(n) % 2).float()
    radius = torch.where(y > 0, 0.5, 1.5) + 0.15 * torch.randn(n, generator=g)
    angle = torch.rand(n, generator=g) * 6.2832
    return torch.stack([radius * angle.cos(), radius * angle.sin()], 1), y.unsqueeze(1)


# Columns of a "breast-cancer-like" table: (mean, std), raw units as the CSV has them.
_TUMOUR_COLUMNS = ((14.0, 3.5), (19.0, 4.3), (92.0, 24.0), (655.0, 352.0), (0.1, 0.014), (880.0, 570.0), (2.9, 2.0), (4100.0, 2200.0))


def tumours(n: int = 400, seed: int = 0, standardise: bool = False) -> tuple[Tensor, Tensor]:
    """Binary labels from a linear teacher on standardised columns, features in raw units
    (areas and perimeters in the hundreds and thousands) unless ``standardise``."""
    g = _gen(seed)
    z = torch.randn(n, len(_TUMOUR_COLUMNS), generator=g)
    teacher = torch.randn(len(_TUMOUR_COLUMNS), generator=g)
    y = ((z @ teacher) > 0).float().unsqueeze(1)
    mean = torch.tensor([m for m, _ in _TUMOUR_COLUMNS])
    std = torch.tensor([s for _, s in _TUMOUR_COLUMNS])
    x = z * std + mean
    return (standardised(x) if standardise else x), y


def houses(n: int = 300, seed: int = 0, standardise: bool = False) -> tuple[Tensor, Tensor]:
    """House prices: living area (sq ft), lot size (sq ft), year built, rooms -> price in $100k."""
    g = _gen(seed)
    area = 1500 + 600 * torch.randn(n, generator=g).abs()
    lot = 8000 + 3000 * torch.randn(n, generator=g)
    year = 1950 + 70 * torch.rand(n, generator=g)
    rooms = (area / 400).round()
    x = torch.stack([area, lot, year, rooms], 1)
    price = 0.9 * area / 1000 + 0.2 * lot / 10000 + 0.6 * (year - 1985) / 35 + 0.1 * torch.randn(n, generator=g)
    return (standardised(x) if standardise else x), price.unsqueeze(1)


def multilabel(n: int = 240, d: int = 8, labels: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Tags: each label is on where its own linear teacher is positive (0 to 5 labels per row)."""
    g = _gen(seed)
    x = torch.randn(n, d, generator=g)
    teacher = torch.randn(d, labels, generator=g)
    return x, (x @ teacher > 0.3).float()


def scores(n: int = 240, d: int = 6, outputs: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Several standardised regression targets per row (any sign, rows summing to anything)."""
    g = _gen(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, outputs, generator=g) * 0.7 + 0.1 * torch.randn(n, outputs, generator=g)
    return x, y


def standardised(x: Tensor) -> Tensor:
    """What sklearn's StandardScaler does."""
    return (x - x.mean(0)) / x.std(0)


def one_hot(y: Tensor, classes: int) -> Tensor:
    return torch.nn.functional.one_hot(y, classes).float()


# ----------------------------------------------------------------------------- module base
class TabularModule(pl.LightningModule):
    """The boilerplate every program shares: its data set, loader and optimiser."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, lr: float, optimizer: str = "adam", shuffle: bool = True) -> None:
        super().__init__()
        self.x, self.y = x, y
        self.batch_size, self.lr, self.optimizer_name, self.shuffle = batch_size, lr, optimizer, shuffle

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(self.x, self.y)
        return DataLoader(data, batch_size=self.batch_size, shuffle=self.shuffle, generator=_gen(1) if self.shuffle else None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# ----------------------------------------------------------------------------- oracle helpers
ACTIVATION_NODES = {"SoftmaxBackward0": "softmax", "SigmoidBackward0": "sigmoid", "ReluBackward0": "relu",
                    "TanhBackward0": "tanh", "LogSoftmaxBackward0": "log_softmax"}
# Nodes of parametrised layers: the search for the producing activation stops there.
_LAYER_NODES = ("AddmmBackward", "MmBackward", "LinearBackward", "ConvolutionBackward")


def producer(t: Tensor) -> str | None:
    """The activation that produced ``t`` (through clamps, arithmetic, shape ops), read from
    autograd's graph: the nearest activation node before any parametrised layer."""
    frontier, seen = [t.grad_fn], set()
    while frontier:
        node = frontier.pop(0)
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if name in ACTIVATION_NODES:
            return ACTIVATION_NODES[name]
        if name.startswith(_LAYER_NODES):
            continue
        frontier += [fn for fn, _ in node.next_functions]
    return None


# Matrix products and the saved tensor that is their left operand (the layer's input).
_MATMUL_INPUTS = {"AddmmBackward0": "_saved_mat1", "MmBackward0": "_saved_self"}


def first_layer_input(out: Tensor) -> Tensor | None:
    """The input of the first matrix product (an nn.Linear, or ``x @ W`` by hand) on the way to
    ``out``, read from the tensors autograd saved: what the model's first layer really received."""
    frontier, seen, products = [out.grad_fn], set(), []
    while frontier:
        node = frontier.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in _MATMUL_INPUTS:
            products.append(node)
        frontier += [fn for fn, _ in node.next_functions]
    if not products:
        return None
    first = min(products, key=lambda n: n._sequence_nr())  # created first = run first
    return getattr(first, _MATMUL_INPUTS[type(first).__name__])


def first_batch(module: pl.LightningModule) -> tuple[Tensor, Tensor]:
    return next(iter(module.train_dataloader()))


def rows_sum_to_one(p: Tensor, tol: float = 1e-4) -> bool:
    return bool(((p.sum(1) - 1).abs() < tol).all())


def parameter_grads_all_zero(module: nn.Module, loss: Tensor) -> bool:
    """The loss cannot move any weight: every parameter gradient is exactly zero."""
    grads = torch.autograd.grad(loss, [p for p in module.parameters()], allow_unused=True)
    return all(g is None or bool((g == 0).all()) for g in grads)


def plain_train(module: pl.LightningModule, steps: int) -> list[float]:
    """The tutorial loop, without Lightning: the losses it saw (NaN included)."""
    opt = module.configure_optimizers()
    losses = []
    batches = itertools.cycle(module.train_dataloader())
    for step in range(steps):
        loss = module.training_step(next(batches), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def is_affine(model: nn.Module, shape: int | tuple[int, ...]) -> bool:
    """Exact check that ``model`` equals one affine map x -> xW + b on inputs of per-row ``shape``
    (float64, eval mode: dropout off, batch norm on its running statistics)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    d_in = math.prod(shape)
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        b = model(torch.zeros(1, *shape, dtype=torch.float64)).flatten(1)
        w = model(torch.eye(d_in, dtype=torch.float64).view(d_in, *shape)).flatten(1) - b
        x = torch.randn(64, *shape, dtype=torch.float64, generator=_gen(7)) * 3
        return bool(torch.allclose(model(x).flatten(1), x.flatten(1) @ w + b, rtol=1e-9, atol=1e-9))


def relu_layer_dies(module: pl.LightningModule, steps: int, share: float = 0.25) -> bool:
    """After ``steps`` of the plain training loop, some ReLU module has at least ``share`` of its
    units silent on every row of the training data (the dead-units oracle)."""
    plain_train(module, steps)
    return max(never_firing_share(module, module.x).values()) >= share


def never_firing_share(model: nn.Module, x: Tensor, kinds: tuple[type, ...] = (nn.ReLU,)) -> dict[str, float]:
    """Per activation module: the share of its units that are <= 0 on every row of ``x``."""
    fired: dict[str, Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, kinds):
            def hook(_m, _i, out, name=name):
                seen = (out > 0).flatten(1).any(0)
                fired[name] = seen if name not in fired else fired[name] | seen
            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {name: float((~f).float().mean()) for name, f in fired.items()}
