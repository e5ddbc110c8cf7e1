"""The faulty zoo: each rule's classic fault injected into zoo architectures, with an independent
oracle (tests/zoo/oracles.py) that confirms the fault is there.

A fault is the zoo case it starts from plus what changes (the build, the data, the loss or the
optimiser), and an oracle: ``oracle(initial_net, trained_net, forwards) -> (confirmed, evidence)``,
where ``forwards`` run the case's loss on fixed batches of its data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import oracles
import torch
import torch.nn as nn
import torch.nn.functional as F
import zoo_data as data
import zoo_models as zm
from zoo_train import Case

Oracle = Callable[[nn.Module, nn.Module, list], tuple[bool, str]]


@dataclass(frozen=True)
class Fault:
    rule: str
    name: str
    case: Case
    oracle: Oracle
    expected_site: str | None = None  # a substring of the site the finding must name, when one site is at fault

    @property
    def id(self) -> str:
        return f"{self.rule}/{self.name}"


# ---- injections ----------------------------------------------------------------------------------
def built(base: str, *edits: Callable[[nn.Module], Any]) -> Callable[[], nn.Module]:
    """The base case's build, then each edit applied in place (under no_grad)."""

    def build() -> nn.Module:
        net = zm.CASES[base].build()
        with torch.no_grad():
            for edit in edits:
                result = edit(net)
                net = result if isinstance(result, nn.Module) else net
        return net

    return build


def swap_activations(old: type[nn.Module], new: Callable[[], nn.Module]) -> Callable[[nn.Module], None]:
    def edit(net: nn.Module) -> None:
        for parent in list(net.modules()):
            for child_name, child in parent.named_children():
                if isinstance(child, old):
                    setattr(parent, child_name, new())
    return edit


def init_normal(std: float, types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)) -> Callable[[nn.Module], None]:
    def edit(net: nn.Module) -> None:
        for m in net.modules():
            if isinstance(m, types):
                m.weight.normal_(0, std)
                if m.bias is not None:
                    m.bias.zero_()
    return edit


def deep_mlp(features: int, classes: int, width: int, depth: int, act: Callable[[], nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(features if i == 0 else width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


def resnet_without_norm() -> nn.Module:
    """The zoo's small timm ResNet with its BatchNorms left out (``norm_layer`` is the identity)."""
    return zm.timm_model("resnet18", layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32, zero_init_last=False,
                         norm_layer=lambda channels, **kwargs: nn.Identity())


def with_nan(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A copy of the data with a missing value (NaN) in one feature of every 50th sample."""
    x = tensors[0].clone()
    x.view(len(x), -1)[::50, 0] = float("nan")
    return (x,) + tuple(tensors[1:])


def raw_breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    """Breast-cancer features as they come (areas in the thousands): not standardised."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target, dtype=torch.long)


def raw_digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The zoo's 3 x 32 x 32 digit images as 8-bit pixel values 0-255: not scaled or normalised."""
    pixels, labels = data.digit_pixels()
    img = F.interpolate(pixels.reshape(-1, 1, 8, 8), size=(32, 32), mode="bilinear", align_corners=False)
    return (img * 255).expand(-1, 3, -1, -1).contiguous(), labels


def vae_loss_raw_input(net: nn.Module, batch: tuple) -> torch.Tensor:
    """The VAE fed pixel values 0-16 as they come (the target stays the [0, 1] probabilities)."""
    x, _ = batch
    probs, mu, logvar = net(x * 16)
    recon = F.binary_cross_entropy(probs, x, reduction="sum") / len(x)
    return recon - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)


def classify_through(fn: Callable[[torch.Tensor], torch.Tensor]):
    """cross_entropy on ``fn(logits)``: the softmax, sigmoid or ReLU some code puts before the loss."""

    def loss(net: nn.Module, batch: tuple) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(fn(zm.logits_of(net(x))), y)

    return loss


def reinit_attention(query_key: Callable[[nn.Module], list[torch.Tensor]], std: float) -> Callable[[nn.Module], None]:
    """Query and key projections drawn from N(0, std): std 1 where the model uses 0.02."""
    def edit(net: nn.Module) -> None:
        for w in query_key(net):
            w.normal_(0, std)
    return edit


def vit_query_key(net: nn.Module) -> list[torch.Tensor]:
    dim = net.embed_dim
    return [b.attn.qkv.weight[: 2 * dim] for b in net.blocks]


def llama_query_key(net: nn.Module) -> list[torch.Tensor]:
    return [w for layer in net.model.layers for w in (layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight)]


class BiasedRouter(nn.Module):
    """A Hugging Face top-k router (Mixtral's, Qwen2-MoE's: logits, softmax in float32, topk) with a
    logit bias per expert: a router that starts out preferring some experts, trained without an
    auxiliary load-balancing loss (Hugging Face adds none unless ``output_router_logits=True``)."""

    def __init__(self, router: nn.Module, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.top_k = router.weight, router.top_k
        self.bias = nn.Parameter(bias.to(router.weight.dtype))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden_states = hidden_states.reshape(-1, self.weight.shape[1])
        router_logits = F.linear(hidden_states, self.weight, self.bias)
        probs = F.softmax(router_logits.float(), dim=-1)
        top, indices = torch.topk(probs, self.top_k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True)
        return router_logits, top.to(router_logits.dtype), indices


def bias_routers(favoured: float) -> Callable[[nn.Module], None]:
    """Every MoE layer's router biased by ``favoured`` toward its first top-k experts (with top-2
    routing, biasing one expert only leaves the second slot spread over the rest)."""
    def edit(net: nn.Module) -> None:
        for layer in net.model.layers:
            gate = layer.mlp.gate
            bias = torch.zeros(gate.weight.shape[0])
            bias[: gate.top_k] = favoured
            layer.mlp.gate = BiasedRouter(gate, bias)
    return edit


def moe_gates(net: nn.Module) -> list[nn.Module]:
    return [layer.mlp.gate for layer in net.model.layers]


SPIKE_STEP = 24


def scaled_batch(factor: float, keep_target: bool = False) -> Callable[[int, tuple], tuple]:
    """One batch of inputs ``factor`` times too large at step SPIKE_STEP (data that skipped its
    scaling); ``keep_target``: the unscaled inputs are appended as the target (an autoencoder's)."""
    def perturb(step: int, batch: tuple) -> tuple:
        if step != SPIKE_STEP:
            return batch
        return (batch[0] * factor,) + tuple(batch[1:]) + ((batch[0],) if keep_target else ())
    return perturb


def vae_loss_with_target(net: nn.Module, batch: tuple) -> torch.Tensor:
    """The VAE's loss, reconstructing ``batch[2]`` when the batch carries a target (a scaled batch)."""
    return zm.vae_loss(net, batch) if len(batch) < 3 else vae_loss_raw_target(net, batch[0], batch[2])


def vae_loss_raw_target(net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs, mu, logvar = net(x)
    recon = F.binary_cross_entropy(probs, target, reduction="sum") / len(x)
    return recon - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)


# ---- oracle helpers ------------------------------------------------------------------------------
def modules_of(net: nn.Module, kinds: tuple[type[nn.Module], ...]) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kinds)]


def at_least(value: float, bound: float, what: str) -> tuple[bool, str]:
    return value >= bound, f"{what} = {value:.3g} (fault needs >= {bound:g})"


def dead_oracle(pick: Callable[[nn.Module], nn.Module], trained: bool, bound: float = 0.25) -> Oracle:
    def oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        net = final if trained else initial
        return at_least(oracles.never_positive_fraction(net, pick(net), forwards), bound, "share of units never > 0 over the data")
    return oracle


def tail_oracle(pick: Callable[[nn.Module], nn.Module], bound: float) -> Oracle:
    """Units whose input (the output of ``pick``) sits below ``bound`` on >99% of samples, at init."""
    def oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        share = oracles.flat_region_fraction(initial, pick(initial), forwards, lambda x: x < bound, inputs=False)
        return at_least(share, 0.5, f"share of units with input < {bound} on >99% of samples")
    return oracle


def saturated_oracle(kind: type[nn.Module], bound: float) -> Oracle:
    """The first ``kind`` activation is saturated (input |x| > bound, so f' < 0.01), at init and at
    the end: on half of all its outputs (DeepDiagnosis' definition), or half of its units saturated
    on >99% of their samples."""
    def oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        units = [oracles.flat_region_fraction(net, modules_of(net, (kind,))[0], forwards, lambda x: x.abs() > bound) for net in (initial, final)]
        outputs = [oracles.flat_region_fraction(net, modules_of(net, (kind,))[0], forwards, lambda x: x.abs() > bound, share=-1.0, pooled=True)
                   for net in (initial, final)]
        value = min(max(u, o) for u, o in zip(units, outputs))
        return at_least(value, 0.5, f"{kind.__name__}: saturated units (init, end) {units[0]:.2f}, {units[1]:.2f}; saturated outputs {outputs[0]:.2f}, {outputs[1]:.2f}")
    return oracle


def hidden_stack_oracle(kind: type[nn.Module], depth: int) -> Oracle:
    def oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        hidden = oracles.hidden_activations_feeding_layers(initial, (kind,), forwards[0])
        return at_least(len(hidden) + 1, depth, f"stack depth ({kind.__name__} outputs feeding a Linear/Conv + 1)")
    return oracle


def std_ratio_oracle(kinds: tuple[type[nn.Module], ...]) -> Oracle:
    def oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        stds = oracles.input_stds(initial, modules_of(initial, kinds), forwards[0])
        return at_least(max(stds) / max(min(stds), 1e-30), 10, f"max/min pre-activation std across {len(stds)} activations at init")
    return oracle


def grad_ratio_oracle(kinds: tuple[type[nn.Module], ...], vanishing: bool) -> Oracle:
    """RMS of d(loss)/d(activation output), first activation vs last, by autograd at init."""
    def oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        g = oracles.grad_rms(initial, modules_of(initial, kinds), forwards[0])
        if vanishing:
            return at_least(g[-1] / max(g[0], 1e-30), 1e3, f"last/first activation gradient RMS ({g[0]:.2e} vs {g[-1]:.2e})")
        per_layer = (g[0] / g[-1]) ** (1 / max(len(g) - 1, 1))
        ok, text = at_least(g[0] / g[-1], 70, "first/last activation gradient RMS")
        return ok and per_layer > 1.5, f"{text}; per layer {per_layer:.2f}"
    return oracle


def activation_growth_oracle(kinds: tuple[type[nn.Module], ...]) -> Oracle:
    def oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        rms = oracles.output_rms(initial, modules_of(initial, kinds), forwards[0])
        return at_least(rms[-1] / max(rms[0], 1e-30), 100, f"last/first activation output RMS ({rms[0]:.3g} -> {rms[-1]:.3g})")
    return oracle


def nonfinite_oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
    bad = oracles.nonfinite_outputs(initial, forwards[0])
    return bool(bad), f"modules with a NaN/Inf output on the first batch: {bad[:3]}"


def producer_oracle(expected: str) -> Oracle:
    def oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        producers = oracles.loss_input_producers(initial, forwards[0])
        return producers == [expected], f"cross_entropy's input produced by {producers}"
    return oracle


def linear_pair_oracle(expected: tuple[str, str]) -> Oracle:
    """The layer pair's first output is, by identity, the second's input: nothing nonlinear between."""
    def oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        pairs = oracles.linear_layers_fed_directly(initial, forwards[0])
        return expected in pairs, f"Linear/Conv outputs feeding the next Linear/Conv directly: {pairs}"
    return oracle


def input_scale_oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
    name, rms = oracles.first_layer_input_rms(initial, forwards[0])
    return at_least(rms, 10, f"RMS of the input of '{name}', the first layer")


def attention_oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
    shares = [oracles.peaked_attention_share(net, forwards[0]) for net in (initial, final)]
    return at_least(min(shares), 0.5, f"share of query rows with one weight > 0.99 (init, end: {shares[0]:.2f}, {shares[1]:.2f}); min")


def on_sdpa(oracle: Oracle) -> Oracle:
    """``oracle`` (which reads q and k at F.scaled_dot_product_attention) on Hugging Face models
    built with eager attention: run on the same weights with attn_implementation "sdpa"."""

    def run(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        kept = [net.config._attn_implementation for net in (initial, final)]
        try:
            for net in (initial, final):
                net.config._attn_implementation = "sdpa"
            return oracle(initial, final, forwards)
        finally:
            for net, implementation in zip((initial, final), kept):
                net.config._attn_implementation = implementation
    return run


def dead_expert_oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
    """Experts under a tenth of the uniform share of the top-k assignments on the trained model,
    counted from the indices each router returns."""
    shares = oracles.expert_shares(final, moe_gates(final), forwards)
    dead = [int((s < 0.1 / len(s)).sum()) for s in shares]
    text = "; ".join(f"layer {i}: shares {' '.join(f'{v:.3f}' for v in s.tolist())}" for i, s in enumerate(shares))
    return sum(dead) > 0, f"experts under 0.1/E of the assignments per layer {dead} ({text})"


def dead_experts_confirmed(net: nn.Module, forwards: list, site: str) -> tuple[bool, str]:
    """The router a dead-experts finding names (``...model.layers.<i>.mlp.gate:router``) has an
    expert under a tenth of the uniform share, counted from its own top-k indices."""
    index = int(site.split("layers.")[1].split(".")[0])
    (shares,) = oracles.expert_shares(net, [net.model.layers[index].mlp.gate], forwards)
    return bool((shares < 0.1 / len(shares)).any()), f"layer {index} shares {' '.join(f'{v:.3f}' for v in shares.tolist())}"


def logit_growth_oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
    """The largest q.k/sqrt(d) over the layers, recomputed by hand at init and at the end: the fault
    is logits grown past 30 (other keys under 1e-13 of the top key's weight) and 10x their start."""
    start, end = (max(oracles.max_attention_logits(net, forwards[0])) for net in (initial, final))
    return end >= 30 and end >= 10 * start, f"largest attention logit {start:.3g} at init -> {end:.3g} at the end"


def log_z_oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
    """Mean logsumexp of the logits reaching cross_entropy, at init and at the end."""
    start, end = (oracles.loss_input_log_z(net, forwards) for net in (initial, final))
    return abs(end) >= 20 and abs(end - start) >= 10, f"mean log Z {start:.3g} at init -> {end:.3g} at the end"


def spike_oracle(pick: Callable[[nn.Module], nn.Module], perturb: Callable[[int, tuple], tuple]) -> Oracle:
    """RMS of the site's output on a batch of the data, and on the same batch perturbed as the
    spiking step's was, on the trained model (plain forward hooks)."""
    def oracle(initial: nn.Module, final: nn.Module, forwards: list) -> tuple[bool, str]:
        site = pick(final)
        normal = oracles.output_rms(final, [site], forwards[0])[0]
        fwd = forwards[0]
        spiked = oracles.output_rms(final, [site], partial(fwd.func, batch=perturb(SPIKE_STEP, fwd.keywords["batch"])))[0]
        return at_least(spiked / max(normal, 1e-30), 5, f"RMS of the site on the scaled batch / on the data ({spiked:.3g} / {normal:.3g})")
    return oracle


# ---- the faulty zoo ------------------------------------------------------------------------------
GELU_TAIL, SILU_TAIL, TANH_FLAT = -3.07, -6.26, 2.99  # where the derivative falls below 0.01


def _faults() -> list[Fault]:
    C = zm.CASES
    case = lambda base, **changes: dataclasses.replace(C[base], **changes)  # noqa: E731
    return [
        # dead-units: ReLU units that never fire
        Fault("dead-units", "mlp-digits-sgd-lr1", case("mlp-digits-sgd", data=data.digit_pixels, optimizer=zm.sgd(1.0, momentum=0, weight_decay=0), steps=60),
              dead_oracle(lambda n: n[1], trained=True), "net.1"),
        Fault("dead-units", "resnet-stem-bias", case("resnet-plain-init", build=built("resnet-plain-init", lambda n: n.bn1.bias.fill_(-10.0))),
              dead_oracle(lambda n: n.act1, trained=False), "net.act1"),
        Fault("dead-units", "unet-first-block-bias", case("unet-shapes", build=built("unet-shapes", lambda n: n.down1[1].bias.fill_(-10.0))),
              dead_oracle(lambda n: n.down1[2], trained=False), "net.down1.2"),
        # near-dead-units: GELU units in the flat negative tail
        Fault("near-dead-units", "vit-mlp-bias", case("vit-tiny", build=built("vit-tiny", lambda n: [b.mlp.fc1.bias.fill_(-10.0) for b in n.blocks])),
              tail_oracle(lambda n: n.blocks[0].mlp.fc1, GELU_TAIL)),
        Fault("near-dead-units", "torch-transformer-ffn-bias", case("torch-transformer-bytes", build=built("torch-transformer-bytes", lambda n: [layer.linear1.bias.fill_(-10.0) for layer in n.encoder.layers])),
              tail_oracle(lambda n: n.encoder.layers[0].linear1, GELU_TAIL)),
        # saturation: tanh units stuck at +-1 (inputs not standardised; weights drawn N(0, 1))
        Fault("saturation", "mlp-tanh-raw-features", case("mlp-breast-cancer", build=lambda: zm.tabular_mlp(30, 2, act=nn.Tanh), data=raw_breast_cancer),
              saturated_oracle(nn.Tanh, TANH_FLAT)),
        Fault("saturation", "vae-tanh-large-init", case("vae-digits", build=built("vae-digits", swap_activations(nn.ReLU, nn.Tanh), init_normal(1.0)),
                                                          loss=vae_loss_raw_input), saturated_oracle(nn.Tanh, TANH_FLAT)),
        # saturating-hidden-activation: sigmoid between the layers of a deep stack
        Fault("saturating-hidden-activation", "mlp-sigmoid-stack", case("mlp-digits-sgd", build=lambda: deep_mlp(64, 10, 128, 4, nn.Sigmoid)),
              hidden_stack_oracle(nn.Sigmoid, 3)),
        Fault("saturating-hidden-activation", "unet-sigmoid", case("unet-shapes", build=built("unet-shapes", swap_activations(nn.ReLU, nn.Sigmoid))),
              hidden_stack_oracle(nn.Sigmoid, 3)),
        # signal-propagation: pre-activation scale collapsing across depth at init (N(0, 0.01), no normalisation)
        Fault("signal-propagation", "mlp-deep-small-init", case("mlp-digits-sgd", build=lambda: _init(deep_mlp(64, 10, 128, 6, nn.ReLU), 0.01)),
              std_ratio_oracle((nn.ReLU,))),
        Fault("signal-propagation", "resnet-no-norm-small-init", case("resnet-plain-init", build=lambda: _init(resnet_without_norm(), 0.01)),
              std_ratio_oracle((nn.ReLU,))),
        # vanishing-gradient: deep sigmoid stacks
        Fault("vanishing-gradient", "mlp-deep-sigmoid", case("mlp-digits-sgd", build=lambda: deep_mlp(64, 10, 128, 8, nn.Sigmoid)),
              grad_ratio_oracle((nn.Sigmoid,), vanishing=True)),
        Fault("vanishing-gradient", "resnet-no-norm-small-init", case("resnet-plain-init", build=lambda: _init(resnet_without_norm(), 0.01)),
              grad_ratio_oracle((nn.ReLU,), vanishing=True)),
        # exploding-gradient and exploding-activations: weights far too large (N(0, 1)), no normalisation
        Fault("exploding-gradient", "mlp-deep-large-init", case("mlp-digits-sgd", build=lambda: _init(deep_mlp(64, 10, 128, 6, nn.ReLU), 1.0)),
              grad_ratio_oracle((nn.ReLU,), vanishing=False)),
        Fault("exploding-gradient", "resnet-no-norm-large-init", case("resnet-plain-init", build=lambda: _init(resnet_without_norm(), 0.3)),
              grad_ratio_oracle((nn.ReLU,), vanishing=False)),
        Fault("exploding-activations", "mlp-deep-large-init", case("mlp-digits-sgd", build=lambda: _init(deep_mlp(64, 10, 128, 6, nn.ReLU), 1.0)),
              activation_growth_oracle((nn.ReLU,))),
        Fault("exploding-activations", "resnet-no-norm-large-init", case("resnet-plain-init", build=lambda: _init(resnet_without_norm(), 0.3)),
              activation_growth_oracle((nn.ReLU,))),
        # non-finite: one missing value (NaN) in the data
        Fault("non-finite", "mlp-nan-feature", case("mlp-breast-cancer", data=lambda: with_nan(data.tabular("breast_cancer"))), nonfinite_oracle),
        Fault("non-finite", "resnet-nan-pixel", case("resnet-plain-init", data=lambda: with_nan(data.digit_images())), nonfinite_oracle),
        # activation-loss-mismatch: softmax into cross_entropy
        Fault("activation-loss-mismatch", "vit-softmax-ce", case("vit-tiny", loss=classify_through(lambda z: z.softmax(-1))), producer_oracle("SoftmaxBackward0")),
        Fault("activation-loss-mismatch", "bert-softmax-ce", case("bert-pooler-cls", loss=classify_through(lambda z: z.softmax(-1))), producer_oracle("SoftmaxBackward0")),
        # output-activation-mismatch: ReLU or sigmoid on the logits of a multi-class loss
        Fault("output-activation-mismatch", "resnet-relu-logits", case("resnet-plain-init", loss=classify_through(F.relu)), producer_oracle("ReluBackward0")),
        Fault("output-activation-mismatch", "mlp-sigmoid-ce", case("mlp-digits-sgd", loss=classify_through(torch.sigmoid)), producer_oracle("SigmoidBackward0")),
        # missing-nonlinearity: the hidden ReLUs replaced by nn.Identity, so Linear layers compose
        Fault("missing-nonlinearity", "mlp-identity", case("mlp-digits-sgd", build=built("mlp-digits-sgd", swap_activations(nn.ReLU, nn.Identity))),
              linear_pair_oracle(("0", "2")), "net.0"),
        Fault("missing-nonlinearity", "vae-identity", case("vae-digits", build=built("vae-digits", swap_activations(nn.ReLU, nn.Identity))),
              linear_pair_oracle(("decoder.0", "decoder.2")), "net.decoder.0"),
        # input-scale: raw features (areas in the thousands) and 0-255 pixels into the first layer
        Fault("input-scale", "mlp-raw-features", case("mlp-breast-cancer", data=raw_breast_cancer), input_scale_oracle, "net.0"),
        Fault("input-scale", "resnet-raw-pixels", case("resnet-plain-init", data=raw_digit_images), input_scale_oracle, "net.conv1"),
        # attention-collapse: query/key weights scaled up, so one key takes all the weight
        Fault("attention-collapse", "vit-sharp-qk", case("vit-tiny", build=built("vit-tiny", reinit_attention(vit_query_key, 1.0))), attention_oracle),
        Fault("attention-collapse", "llama-sharp-qk", case("llama", build=built("llama", reinit_attention(llama_query_key, 1.0))), attention_oracle),
        Fault("attention-collapse", "llama-eager-sharp-qk", case("llama-eager", build=built("llama-eager", reinit_attention(llama_query_key, 1.0))),
              on_sdpa(attention_oracle)),
        # dead-experts: routers biased toward top-k experts, no auxiliary load-balancing loss
        Fault("dead-experts", "mixtral-biased-router", case("mixtral-moe", build=built("mixtral-moe", bias_routers(8.0))), dead_expert_oracle),
        Fault("dead-experts", "qwen2-moe-biased-router", case("qwen2-moe", build=built("qwen2-moe", bias_routers(8.0))), dead_expert_oracle),
        # attention-logit-growth: no QK-norm, AdamW at a learning rate 30x the usual
        Fault("attention-logit-growth", "gpt2-high-lr", case("gpt2", optimizer=zm.adamw(3e-2)), logit_growth_oracle),
        Fault("attention-logit-growth", "llama-high-lr", case("llama", optimizer=zm.adamw(3e-2)), logit_growth_oracle),
        Fault("attention-logit-growth", "gpt2-eager-high-lr", case("gpt2-eager", optimizer=zm.adamw(3e-2)), on_sdpa(logit_growth_oracle)),
        # output-logit-divergence: a next byte that is always certain, AdamW 3e-2: the loss goes to 0 and the logits up
        Fault("output-logit-divergence", "gpt2-certain-next-byte", case("gpt2", data=lambda: (data.counting_windows(),), optimizer=zm.adamw(3e-2), steps=60),
              log_z_oracle, "loss:cross_entropy"),
        Fault("output-logit-divergence", "llama-certain-next-byte", case("llama", data=lambda: (data.counting_windows(),), optimizer=zm.adamw(3e-2), steps=60),
              log_z_oracle, "loss:cross_entropy"),
        # activation-spike: one batch 30x too large at step SPIKE_STEP (24) of 30, judged every 2 steps
        Fault("activation-spike", "mlp-scaled-batch", case("mlp-digits-sgd", perturb=scaled_batch(30.0), steps=30, log_every=2),
              spike_oracle(lambda n: n[1], scaled_batch(30.0)), "net.1"),
        Fault("activation-spike", "vae-scaled-batch", case("vae-digits", perturb=scaled_batch(30.0, keep_target=True), loss=vae_loss_with_target, steps=30, log_every=2),
              spike_oracle(lambda n: n.encoder[1], scaled_batch(30.0, keep_target=True)), "net.encoder.1"),
    ]


def _init(net: nn.Module, std: float) -> nn.Module:
    with torch.no_grad():
        init_normal(std)(net)
    return net


FAULTS: list[Fault] = _faults()
RULES = sorted({f.rule for f in FAULTS})
