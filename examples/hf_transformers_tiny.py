"""A tiny Hugging Face model built from a config (nothing downloaded), watched by ActivationDiagnostics.

GPT-2's MLP uses ``NewGELUActivation`` and BERT's ``GELUActivation``: modules of ``transformers``,
not of ``torch.nn``. act_diagnostics recognises them by class name (``kinds.NAMED_MODULE_KINDS``),
so every ``transformer.h.<i>.mlp.act`` (GPT-2) or ``bert.encoder.layer.<i>.intermediate.intermediate_act_fn``
(BERT) is a site with GELU's firing and saturation tests. Needs ``pip install transformers``.

    python examples/hf_transformers_tiny.py                 # GPT-2 style LM, 100 steps, under a minute on CPU
    python examples/hf_transformers_tiny.py --model bert    # a BERT sequence classifier instead
    python examples/hf_transformers_tiny.py --fast          # a smoke run
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
import pytorch_lightning as pl

from act_diagnostics import ActivationDiagnostics

VOCAB, CONTEXT, CLASSES = 64, 32, 2


def tiny_model(kind: str) -> torch.nn.Module:
    """A 2-layer, 32-wide model from a config: random weights, no download, no tokenizer."""
    try:
        import transformers
    except ImportError:
        raise SystemExit("this example needs Hugging Face transformers: pip install transformers") from None

    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2, activation_function="gelu_new"
        )
        return transformers.GPT2LMHeadModel(config)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=CONTEXT, hidden_act="gelu", num_labels=CLASSES,
    )
    return transformers.BertForSequenceClassification(config)


def synthetic_batches(kind: str, n: int = 512, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    if kind == "gpt2":  # count upwards mod VOCAB from a random start: easy to learn
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        tokens = (start + torch.arange(CONTEXT)) % VOCAB
        return torch.utils.data.TensorDataset(tokens, tokens)
    tokens = torch.randint(0, VOCAB, (n, CONTEXT), generator=g)
    labels = (tokens[:, 0] < VOCAB // 2).long()  # the class is decided by the first token
    return torch.utils.data.TensorDataset(tokens, labels)


class HFModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, kind: str, lr: float = 1e-3) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.lr = lr

    def training_step(self, batch, batch_idx):
        tokens, target = batch
        logits = self.model(input_ids=tokens).logits
        if self.kind == "gpt2":
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), target[:, 1:].reshape(-1))
        else:
            loss = F.cross_entropy(logits, target)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def main(argv: Sequence[str] | None = None) -> ActivationDiagnostics:
    def model_flag(parser: Any) -> None:
        parser.add_argument("--model", choices=("gpt2", "bert"), default="gpt2", help="which tiny model (default: gpt2)")

    args = _common.parse_args(__doc__.splitlines()[0], argv, default_steps=100, extra=model_flag)
    model_kind = args.model
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(synthetic_batches(model_kind), batch_size=32, shuffle=True)
    callback = ActivationDiagnostics(log_every_n_steps=10, verbose=not args.fast)
    trainer = _common.trainer("pytorch_lightning", args.logdir, f"hf_{model_kind}_tiny", args.max_steps, [callback])
    _common.fit(trainer, HFModule(tiny_model(model_kind), model_kind), loader)
    sites = callback.last_snapshot.sites if callback.last_snapshot else {}
    print(f"\nsites found: {', '.join(f'{n} ({s.module_type})' for n, s in sites.items())}")
    _common.print_findings(f"hf_{model_kind}_tiny", callback)
    return callback


if __name__ == "__main__":
    main()
