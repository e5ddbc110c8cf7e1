"""A token-level language model from ``nn.TransformerEncoder``, watched by ActivationDiagnostics.

Uses the ``lightning.pytorch`` flavour (``from act_diagnostics.lightning import ...``). The
activations of ``nn.TransformerEncoderLayer`` are *functional* (``F.relu`` / ``F.gelu`` called in
its forward), so module hooks alone would miss them; act_diagnostics finds them as sites named
``encoder.layers.0:gelu``, ``encoder.layers.1:gelu``, ... and pairs the head's logits with the
``F.cross_entropy`` loss. The causal self-attention weights, which ``nn.MultiheadAttention`` never
returns here, are recomputed for a sample on detail steps: ``encoder.layers.0.self_attn:attention``
(judged by the attention-collapse rule). The data is synthetic (noisy repeating patterns): nothing
is downloaded.

    python examples/transformer_lm.py            # 150 steps, well under a minute on CPU
    python examples/transformer_lm.py --fast     # a smoke run
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
import lightning.pytorch as L

from act_diagnostics.lightning import ActivationDiagnostics

VOCAB, CONTEXT = 32, 32


def synthetic_tokens(n: int = 1024, seed: int = 0) -> torch.utils.data.TensorDataset:
    """Sequences that repeat a random motif of length 3..6, with 5% noise tokens: learnable in-context."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        period = int(torch.randint(3, 7, (1,), generator=g))
        motif = torch.randint(0, VOCAB, (period,), generator=g)
        seq = motif.repeat(math.ceil((CONTEXT + 1) / period))[: CONTEXT + 1]
        noise = torch.rand(CONTEXT + 1, generator=g) < 0.05
        seq[noise] = torch.randint(0, VOCAB, (int(noise.sum()),), generator=g)
        rows.append(seq)
    data = torch.stack(rows)
    return torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:])


class TinyLM(L.LightningModule):
    def __init__(self, d_model: int = 64, layers: int = 2, heads: int = 4, activation: str = "gelu", lr: float = 3e-3) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(CONTEXT, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=4 * d_model, dropout=0.0, activation=activation, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(CONTEXT), persistent=False)
        self.lr = lr

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:t]
        h = self.encoder(h, mask=self.causal[:t, :t], is_causal=True)
        return self.head(self.norm(h))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x).reshape(-1, VOCAB), y.reshape(-1))
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def main(argv: Sequence[str] | None = None) -> ActivationDiagnostics:
    args = _common.parse_args(__doc__.splitlines()[0], argv, default_steps=150)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(synthetic_tokens(), batch_size=32, shuffle=True)
    callback = ActivationDiagnostics(log_every_n_steps=10, verbose=not args.fast)
    trainer = _common.trainer("lightning.pytorch", args.logdir, "transformer_lm", args.max_steps, [callback])
    _common.fit(trainer, TinyLM(), loader)
    _common.print_findings("transformer_lm", callback)
    return callback


if __name__ == "__main__":
    main()
