"""The zoo: standard architectures built offline from configs (timm, transformers, torch.nn) with
random weights, the data each is trained on, and the optimiser and learning rate people use.

timm and transformers are imported inside the builders, so this module imports without them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import zoo_data as data
from zoo_train import Case

SEQ = data.SEQ_LEN


# ---- optimisers as people use them -----------------------------------------------------------
def adamw(lr: float, weight_decay: float = 0.01):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def sgd(lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


# ---- losses --------------------------------------------------------------------------------------
def logits_of(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def classify(net: nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(logits_of(net(x)), y)


def causal_lm(net: nn.Module, batch: tuple) -> torch.Tensor:
    (ids,) = batch
    return net(input_ids=ids, labels=ids).loss  # transformers shifts the labels itself


def seq2seq_reverse(net: nn.Module, batch: tuple) -> torch.Tensor:
    (ids,) = batch
    return net(input_ids=ids, labels=ids.flip(1)).loss


def vae_loss(net: nn.Module, batch: tuple) -> torch.Tensor:
    x, _ = batch
    probs, mu, logvar = net(x)
    recon = F.binary_cross_entropy(probs, x, reduction="sum") / len(x)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
    return recon + kl


# ---- torch.nn models people write themselves ---------------------------------------------------
def tabular_mlp(features: int = 30, classes: int = 2, width: int = 64, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    return nn.Sequential(nn.Linear(features, width), act(), nn.Linear(width, width), act(), nn.Linear(width, classes))


class RecurrentClassifier(nn.Module):
    """An LSTM or GRU over a sequence (of feature rows, or of byte embeddings); the last state
    classifies, through a Linear or a small ReLU MLP (``mlp_head``). The cells' own sigmoid and tanh
    run inside torch's fused kernels, out of any monitor's sight; the head is what is measured."""

    def __init__(self, cell: str, features: int, classes: int, hidden: int = 64, vocab: int | None = None, mlp_head: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, features) if vocab else None
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](features, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)) if mlp_head else nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x)
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TokenTransformerClassifier(nn.Module):
    """nn.TransformerEncoder over byte embeddings, mean-pooled, as in PyTorch's tutorials."""

    def __init__(self, classes: int = 4, dim: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, dim)
        self.pos = nn.Parameter(torch.randn(1, SEQ, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids) + self.pos).mean(1))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """A two-level U-Net (Ronneberger et al. 2015) at small width: per-pixel class logits."""

    def __init__(self, cin: int = 1, classes: int = 3, width: int = 8) -> None:
        super().__init__()
        self.down1, self.down2 = _conv_block(cin, width), _conv_block(width, 2 * width)
        self.bottom = _conv_block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _conv_block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = _conv_block(2 * width, width)
        self.out = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.out(u1)


class VAE(nn.Module):
    """A Kingma & Welling VAE on 64-pixel digits: ReLU MLP encoder/decoder, sigmoid pixel probabilities."""

    def __init__(self, features: int = 64, hidden: int = 128, latent: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.mu, self.logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


# ---- timm ----------------------------------------------------------------------------------------
def timm_model(name: str, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def timm_class(path: str, **kwargs: Any) -> nn.Module:
    """A timm architecture class built from its config directly (when the registered name fixes
    the sizes): ``timm_class("mlp_mixer.MlpMixer", embed_dim=64)``."""
    import importlib

    module, cls = path.rsplit(".", 1)
    return getattr(importlib.import_module(f"timm.models.{module}"), cls)(num_classes=10, **kwargs)


def torchvision_style_init(model: nn.Module) -> nn.Module:
    """torchvision's MobileNetV3 init: Kaiming fan-out convs, unit BatchNorm, classifier Linears
    N(0, 0.01). timm's 1x1 ``conv_head`` is torchvision's first classifier Linear, so it gets N(0, 0.01) too."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name != "conv_head":
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, 0, 0.01)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


# ---- transformers --------------------------------------------------------------------------------
def hf(model_cls: str, config_cls: str, attention: str = "sdpa", **config: Any) -> nn.Module:
    """``attention``: Hugging Face's attn_implementation ("eager": matmul, mask, softmax, matmul by hand)."""
    import transformers

    cfg = getattr(transformers, config_cls)(**config)
    cfg._attn_implementation = attention
    return getattr(transformers, model_cls)(cfg)


_DECODER = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
_ENCODER = dict(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=64, num_labels=4)


def _cases() -> list[Case]:
    digits_img, text_lm, text_cls = data.digit_images, lambda: (data.byte_windows(),), data.byte_sources
    return [
        # tabular and small own models
        Case("mlp-breast-cancer", lambda: tabular_mlp(30, 2), lambda: data.tabular("breast_cancer"), classify, adamw(1e-3)),
        Case("mlp-digits-sgd", lambda: tabular_mlp(64, 10, 128), lambda: data.tabular("digits"), classify, sgd(0.05, weight_decay=0)),
        Case("lstm-digit-rows", lambda: RecurrentClassifier("lstm", 8, 10), data.digit_rows, classify, adamw(3e-3)),
        Case("gru-bytes", lambda: RecurrentClassifier("gru", 32, 4, vocab=256, mlp_head=True), text_cls, classify, adamw(3e-3)),
        Case("unet-shapes", UNet, data.shapes, classify, adamw(1e-3), batch_size=16),
        Case("vae-digits", VAE, data.digit_pixels, vae_loss, adamw(1e-3)),
        Case("torch-transformer-bytes", TokenTransformerClassifier, text_cls, classify, adamw(1e-3)),
        # timm CNNs and vision transformers on 32x32 digits
        Case("resnet-zero-init-bn", lambda: timm_model("resnet18", layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32), digits_img, classify, sgd(0.1)),
        Case("resnet-plain-init", lambda: timm_model("resnet18", layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32, zero_init_last=False), digits_img, classify, sgd(0.1)),
        Case("seresnet18", lambda: timm_model("seresnet18", layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32), digits_img, classify, sgd(0.1)),
        Case("efficientnet", lambda: timm_model("test_efficientnet"), digits_img, classify, adamw(1e-3)),
        Case("mobilenetv3-small-tv-init", lambda: torchvision_style_init(timm_model("mobilenetv3_small_050")), digits_img, classify, adamw(1e-3), batch_size=16),
        Case("convnext-atto", lambda: timm_model("convnext_atto", depths=(1, 1, 2, 1), dims=(32, 64, 128, 256)), digits_img, classify, adamw(1e-3, 0.05)),
        Case("vit-tiny", lambda: timm_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4), digits_img, classify, adamw(1e-3, 0.05)),
        Case("mlp-mixer", lambda: timm_class("mlp_mixer.MlpMixer", img_size=32, patch_size=4, num_blocks=4, embed_dim=64), digits_img, classify, adamw(1e-3, 0.05)),
        # transformers
        Case("gpt2", lambda: hf("GPT2LMHeadModel", "GPT2Config", vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0), text_lm, causal_lm, adamw(1e-3)),
        Case("llama", lambda: hf("LlamaForCausalLM", "LlamaConfig", **_DECODER), text_lm, causal_lm, adamw(1e-3)),
        # the same two with attention written out (attn_implementation="eager"): measured as attention too
        Case("gpt2-eager", lambda: hf("GPT2LMHeadModel", "GPT2Config", "eager", vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
                                      eos_token_id=0), text_lm, causal_lm, adamw(1e-3)),
        Case("llama-eager", lambda: hf("LlamaForCausalLM", "LlamaConfig", "eager", **_DECODER), text_lm, causal_lm, adamw(1e-3)),
        Case("mistral", lambda: hf("MistralForCausalLM", "MistralConfig", sliding_window=16, **_DECODER), text_lm, causal_lm, adamw(1e-3)),
        Case("qwen2", lambda: hf("Qwen2ForCausalLM", "Qwen2Config", **_DECODER), text_lm, causal_lm, adamw(1e-3)),
        Case("mixtral-moe", lambda: hf("MixtralForCausalLM", "MixtralConfig", num_local_experts=4, num_experts_per_tok=2, **_DECODER), text_lm, causal_lm, adamw(1e-3)),
        Case("qwen2-moe", lambda: hf("Qwen2MoeForCausalLM", "Qwen2MoeConfig", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                                     shared_expert_intermediate_size=64, **_DECODER), text_lm, causal_lm, adamw(1e-3)),
        Case("bert-pooler-cls", lambda: hf("BertForSequenceClassification", "BertConfig", **_ENCODER), text_cls, classify, adamw(1e-3)),
        Case("roberta-cls", lambda: hf("RobertaForSequenceClassification", "RobertaConfig", pad_token_id=1, **_ENCODER), text_cls, classify, adamw(1e-3),
             steps=80),  # RoBERTa starts slower than BERT: 40 steps do not show it learning
        Case("t5-relu", lambda: hf("T5ForConditionalGeneration", "T5Config", vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                 feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0), text_lm, seq2seq_reverse, adamw(1e-3)),
    ]


CASES: dict[str, Case] = {c.name: c for c in _cases()}
