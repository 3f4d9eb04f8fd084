"""torch.compile of our networks (issue 9).

Our modules write their reshapes as einops patterns through `svd_core.nn.layout.rearrange`, which
is einops.rearrange in eager and one operator, `torch.ops.svd_core.rearrange`, under torch.compile,
so that dynamo does not trace einops' parser on every call (about two minutes of tracing for the
tiny UNet with einops.rearrange called directly; see svd_core/nn/layout.py). Checked here:

- `rearrange` and the operator give einops' results, views and errors, for every pattern we use;
- the tiny UNet, VAE decoder and image encoder compile (backend "eager": dynamo only) into one
  graph with no graph break, holding one operator per eager rearrange call, and give the eager
  output;
- a compiled training step through AOT autograd (what inductor consumes) decomposes the operator
  into aten ops and gives eager's output and gradients.

The UNet compile takes about 11 s on one core (39 s while another job shared the 2-core
machine); the whole file about 22 s (76 s).
"""

from __future__ import annotations

import contextlib
import copy

import einops
import pytest
import torch
from einops import EinopsError
from functorch.compile import make_boxed_func
from helpers import random_model, randomize
from torch._dynamo.backends.common import aot_autograd

from svd_core.config import SVDConfig
from svd_core.nn import embed_added
from svd_core.nn.layout import rearrange
from svd_core.unet import SpatioTemporalTransformer, UNet

pytestmark = pytest.mark.usefixtures("one_thread")

REARRANGE_OP = torch.ops.svd_core.rearrange.default
# Compiled against eager, as max |a - b| / max |b|: dynamo and AOT autograd run the same aten ops,
# so any difference is round-off from a changed order of operations; none is expected.
COMPILED_RTOL = 1e-6

# Every pattern our modules use, with an input shape and the lengths they pass.
PATTERNS = [
    ((6, 4, 3, 5), "(b f) c h w -> b c f h w", {"f": 3}),
    ((2, 4, 3, 3, 5), "b c f h w -> (b f) c h w", {}),
    ((6, 7), "(b f) e -> b f e", {"f": 3}),
    ((6, 2, 8), "(b f) n d -> b f n d", {"f": 3}),
    ((6, 4, 3, 5), "n c h w -> n (h w) c", {}),
    ((6, 15, 4), "(b f) s c -> b s f c", {"f": 3}),
    ((2, 15, 3, 4), "b s f c -> (b f) s c", {}),
    ((6, 15, 4), "n (h w) c -> n c h w", {"h": 3}),
    ((2, 3, 4, 3, 5), "b f c h w -> (b f) c h w", {}),
    ((6, 4, 3, 5), "(b f) c h w -> b f c h w", {"b": 2}),
    ((2, 3, 4), "b f c -> b c f 1 1", {}),
    ((6, 10, 12), "n l (h d) -> n h l d", {"h": 4}),
    ((6, 4, 10, 3), "n h l d -> n l (h d)", {}),
    ((2, 10, 24), "b l (three h d) -> three b h l d", {"three": 3, "h": 4}),
    ((2, 4, 10, 3), "b h l d -> b l (h d)", {}),
]


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@contextlib.contextmanager
def _count_einops_calls():
    """Yield [calls]: the number of einops.rearrange calls made inside the block."""
    calls = [0]
    original = einops.rearrange

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    einops.rearrange = counting
    try:
        yield calls
    finally:
        einops.rearrange = original


def _compile_recording(fn):
    """torch.compile(fn) with dynamo only (as backend="eager"), no graph break allowed; returns
    the compiled function and the list that receives the graphs dynamo captures."""
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    return torch.compile(fn, backend=backend, fullgraph=True), graphs


def _calls_to(graph_module, target) -> int:
    return sum(node.target is target for node in graph_module.graph.nodes)


# ---- the wrapper and the operator ---------------------------------------------------------------


@pytest.mark.parametrize(("shape", "pattern", "lengths"), PATTERNS, ids=[p[1] for p in PATTERNS])
def test_rearrange_and_operator_give_einops_results_and_views(shape, pattern, lengths):
    x = torch.randn(shape)
    expected = einops.rearrange(x, pattern, **lengths)
    through_op = REARRANGE_OP(x, pattern, list(lengths), list(lengths.values()))
    for got in (rearrange(x, pattern, **lengths), through_op):
        assert got.shape == expected.shape
        assert torch.equal(got, expected)
        assert _shares_storage(got, x) == _shares_storage(expected, x)


def test_eager_rearrange_calls_einops_not_the_operator():
    x = torch.randn(6, 4, 3, 5)
    with _count_einops_calls() as calls:
        rearrange(x, "(b f) c h w -> b c f h w", f=3)
    assert calls == [1]


def test_bad_pattern_raises_einops_error_eager_and_through_the_operator():
    x = torch.randn(6, 4, 3, 5)
    with pytest.raises(EinopsError, match="can't divide axis of length 6"):
        rearrange(x, "(b f) c h w -> b c f h w", f=4)
    with pytest.raises(EinopsError, match="can't divide axis of length 6"):
        REARRANGE_OP(x, "(b f) c h w -> b c f h w", ["f"], [4])


def test_compiled_rearrange_is_one_operator_in_the_graph():
    x = torch.randn(6, 4, 3, 5)

    def fold(t):
        return rearrange(t * 2, "(b f) c h w -> b c f h w", f=3) + 1

    compiled, graphs = _compile_recording(fold)
    assert torch.equal(compiled(x), fold(x))
    assert len(graphs) == 1
    assert _calls_to(graphs[0], REARRANGE_OP) == 1


# ---- whole networks ---------------------------------------------------------------------------


def test_compiled_unet_is_one_graph_equal_to_eager():
    """The tiny UNet (213 rearrange calls) under dynamo: one graph, one operator per call."""
    cfg = SVDConfig.tiny().unet
    unet = UNet(cfg).eval()
    randomize(unet, seed=0)
    generator = torch.Generator().manual_seed(1)
    batch, frames = 2, 3
    x = torch.randn(batch, frames, cfg.in_channels, 8, 8, generator=generator)
    c_noise = 0.25 * torch.log(torch.tensor([700.0, 0.5]))
    context = torch.randn(batch, 1, cfg.context_dim, generator=generator)
    vector = embed_added(
        torch.tensor([6.0, 3.0]),
        torch.tensor([127.0, 40.0]),
        torch.tensor([0.02, 0.1]),
        dim=cfg.addition_embed_dim,
    )
    compiled, graphs = _compile_recording(unet)
    with torch.no_grad():
        with _count_einops_calls() as eager_calls:
            expected = unet(x, c_noise, context, vector)
        got = compiled(x, c_noise, context, vector)
    assert len(graphs) == 1
    assert _calls_to(graphs[0], REARRANGE_OP) == eager_calls[0] > 0
    print(f"\nUNet: {eager_calls[0]} rearrange calls, rel={_relative(got, expected):.1e}")
    assert _relative(got, expected) <= COMPILED_RTOL


def test_compiled_vae_decoder_and_image_encoder_equal_eager():
    """The decoder is compared in float64: it runs channels-last, and dynamo's fake tensors lose
    that layout after a GroupNorm (the real CPU kernel keeps it), so the traced graph takes
    conv_over_frames' standard-layout branch where eager takes the channels-last one: the same
    sums in another order, about 6e-6 apart in float32. In float64 that order is invisible and
    any other difference would still show."""
    model = random_model()
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 3, 4, 8, 8, generator=generator, dtype=torch.float64)
    image = torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1
    vae = copy.deepcopy(model.vae).double()
    for fn, inp in ((vae.decode, latents), (model.image_encoder, image)):
        compiled, graphs = _compile_recording(fn)
        with torch.no_grad():
            with _count_einops_calls() as eager_calls:
                expected = fn(inp)
            got = compiled(inp)
        assert len(graphs) == 1
        assert _calls_to(graphs[0], REARRANGE_OP) == eager_calls[0] > 0
        assert _relative(got, expected) <= COMPILED_RTOL


def test_compiled_training_step_decomposes_the_operator_and_matches_eager_gradients():
    """AOT autograd (inductor's input) traces the operator into aten ops, forward and backward."""
    cfg = SVDConfig.tiny().unet
    block = SpatioTemporalTransformer(2 * cfg.model_channels, cfg)
    randomize(block, seed=3)
    generator = torch.Generator().manual_seed(4)
    batch, frames = 2, 3
    x = torch.randn(batch * frames, 2 * cfg.model_channels, 4, 4, generator=generator)
    context = torch.randn(batch * frames, 1, cfg.context_dim, generator=generator)
    indicator = torch.zeros(batch, frames)
    upstream = torch.randn(x.shape, generator=generator)

    aten_graphs = []

    def record(graph_module, example_inputs):
        aten_graphs.append(graph_module)
        return make_boxed_func(graph_module.forward)

    torch._dynamo.reset()
    compiled = torch.compile(
        block, backend=aot_autograd(fw_compiler=record, bw_compiler=record), fullgraph=True
    )

    def step(fn):
        block.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_()
        out = fn(x_in, context, indicator)
        (out * upstream).sum().backward()
        grads = {name: p.grad for name, p in block.named_parameters()}
        return out.detach(), x_in.grad, grads

    expected_out, expected_dx, expected_grads = step(block)
    got_out, got_dx, got_grads = step(compiled)

    assert len(aten_graphs) == 2  # forward and backward
    for graph_module in aten_graphs:
        targets = {str(node.target) for node in graph_module.graph.nodes}
        assert not any("svd_core" in target or "einops" in target for target in targets)
    assert _relative(got_out, expected_out) <= COMPILED_RTOL
    assert _relative(got_dx, expected_dx) <= COMPILED_RTOL
    for name, grad in expected_grads.items():
        assert _relative(got_grads[name], grad) <= COMPILED_RTOL, name
