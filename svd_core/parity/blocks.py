"""Block by block: which reference module matches each of our modules, and their outputs side by side.

Correspondence, derived from the key maps (svd_core/loading/*_maps.py), never listed by hand: our
module M matches the reference module R that holds the checkpoint tensors of M's parameters (the
deepest module containing all of them), provided R holds nothing else: every parameter of R must
map back into M. So `encoder.1.res_blocks.0` (UNet) matches diffusers' `down_blocks.1.resnets.0`,
`encoder.1.res_blocks.0.blend` its `time_mixer`, and CLIP's `blocks.3` transformers'
`vision_model.encoder.layers.3`. A module of ours whose parameters the reference spreads over a
module shared with other parameters has no counterpart, and is listed as skipped.

Which of our modules are compared (`detail`):
- "blocks": every level of the UNet and the VAE, every res block, transformer, up/downsampler and
  attention block, the embeddings, and the layers directly in a network (conv_in, norm_out,
  conv_out, quant_conv, CLIP's patch embedding, norms and projection);
- "fine": also, inside each spatio-temporal res block and transformer, the spatial half, the
  temporal half, the blend, and (transformers) the spatial and temporal transformer blocks and the
  frame-position MLP.

Forward hooks record every output on both sides (the first tensor of a tuple output); rows come in
the order our modules finish running (inner blocks before the block holding them). Where the two
implementations lay out one activation differently, ours is rearranged to the reference's layout
and the row says how:
- the UNet res blocks' blend: ours (B·F, C, H, W), diffusers' time_mixer (B, C, F, H, W);
- the temporal transformer blocks: ours (B, H·W, F, C), diffusers (B·F, H·W, C);
- the frame-position MLP: ours (F, C) once, diffusers (B·F, C), one copy per clip.
Anything else that still differs in shape is skipped, and so named in the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from .. import unet as unet_module
from .. import vae as vae_module
from ..clip import ImageEncoder, VisionBlock
from ..loading.keymap import KeyMap
from ..nn import AlphaBlend, EmbeddingMLP, ResBlock, Upsample
from ..nn.transformer import SpatialTransformerBlock, TemporalTransformerBlock
from .report import Comparison, compare

DETAILS = ("fine", "blocks")

# Blocks compared at every detail level.
BLOCK_CLASSES = (
    unet_module.EncoderLevel,
    unet_module.MiddleBlock,
    unet_module.DecoderLevel,
    unet_module.SpatioTemporalResBlock,
    unet_module.SpatioTemporalTransformer,
    unet_module.Downsample,
    vae_module.EncoderLevel,
    vae_module.MidBlock,
    vae_module.DecoderLevel,
    vae_module.VideoResBlock,
    vae_module.AttentionBlock,
    vae_module.Downsample,
    Upsample,
    ResBlock,
    EmbeddingMLP,
    VisionBlock,
    AlphaBlend,
    SpatialTransformerBlock,
    TemporalTransformerBlock,
)
# Blocks whose insides "blocks" detail leaves out: the spatial/temporal pairs.
PAIR_CLASSES = (
    unet_module.SpatioTemporalResBlock,
    unet_module.SpatioTemporalTransformer,
    vae_module.VideoResBlock,
)
# Networks whose own layers (conv_in, norm_out, ...) are compared.
NETWORK_CLASSES = (
    unet_module.UNet,
    vae_module.VAE,
    vae_module.Encoder,
    vae_module.Decoder,
    ImageEncoder,
)
LAYER_CLASSES = (nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm, nn.Linear)

Adapter = Callable[[torch.Tensor, int, int], torch.Tensor]  # (ours, batch, frames) -> their layout


@dataclass(frozen=True)
class BlockPair:
    """One of our modules, its reference counterpart, and how to lay out ours like theirs."""

    ours: str
    theirs: str
    adapt: Adapter | None = None
    note: str = ""
    capture_input: bool = False  # compare what the modules receive instead of what they return


def _frames_to_channel_major(x: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    return rearrange(x, "(b f) c h w -> b c f h w", f=frames)


def _pixel_columns_to_frames(x: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    return rearrange(x, "b s f c -> (b f) s c")


def _one_copy_per_clip(x: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    return x.repeat(batch, 1)


def _adapter(module: nn.Module, parent: nn.Module) -> tuple[Adapter | None, str]:
    """How our output of `module` (inside `parent`) is rearranged to the reference's layout."""
    if isinstance(module, AlphaBlend) and isinstance(parent, unet_module.SpatioTemporalResBlock):
        return _frames_to_channel_major, "ours (B·F, C, H, W) → (B, C, F, H, W)"
    if isinstance(module, TemporalTransformerBlock):
        return _pixel_columns_to_frames, "ours (B, H·W, F, C) → (B·F, H·W, C)"
    if isinstance(module, EmbeddingMLP) and isinstance(
        parent, unet_module.SpatioTemporalTransformer
    ):
        return _one_copy_per_clip, "ours (F, C) → (B·F, C)"
    return None, ""


def probed_modules(root: nn.Module, prefixes: Iterable[str], detail: str = "fine") -> list[str]:
    """Paths (relative to `root`) of our modules to compare, under any of `prefixes` ("" = all)."""
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {DETAILS}, got {detail!r}")
    prefixes = tuple(prefixes)
    modules = dict(root.named_modules())
    names = []
    for name, module in modules.items():
        if not name or not any(name == p.rstrip(".") or name.startswith(p) for p in prefixes):
            continue
        parent_name = name.rpartition(".")[0]
        parent = modules[parent_name]
        if detail == "blocks" and _inside_pair(name, modules):
            continue
        if isinstance(module, BLOCK_CLASSES) or (
            isinstance(module, LAYER_CLASSES) and isinstance(parent, NETWORK_CLASSES)
        ):
            names.append(name)
    return names


def _inside_pair(name: str, modules: dict[str, nn.Module]) -> bool:
    parts = name.split(".")
    return any(isinstance(modules[".".join(parts[:i])], PAIR_CLASSES) for i in range(1, len(parts)))


def _inverse(key_map: KeyMap) -> dict[str, str]:
    """Checkpoint key -> our state-dict name."""
    return {key: ours for ours, rule in key_map.entries.items() for key in rule.keys}


def counterpart(
    name: str, key_map: KeyMap, their_root: nn.Module, inverse: dict[str, str] | None = None
) -> tuple[str | None, str]:
    """The reference module matching our module `name` (module docstring), or (None, why not)."""
    ours = [k for k in key_map.entries if k.startswith(name + ".")]
    if not ours:
        return None, "holds no parameters to match it by"
    theirs = [key for k in ours for key in key_map.entries[k].keys]
    paths = [key.rpartition(".")[0].split(".") for key in theirs]
    common = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    module = their_root.get_submodule(".".join(common))
    while common and isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # no forward to hook
        common.pop()
        module = their_root.get_submodule(".".join(common))
    their_name = ".".join(common)
    if not their_name:
        return None, "its parameters sit directly in the reference network, beside others"
    inverse = _inverse(key_map) if inverse is None else inverse
    strays = []
    for key in module.state_dict(prefix=their_name + "."):
        back = inverse.get(key)
        if back is None and key_map.ignored_reason(key) is not None:
            continue
        if back is None or not back.startswith(name + "."):
            strays.append(key)
    if strays:
        return None, (
            f"the reference keeps its parameters in `{their_name}` together with others "
            f"(e.g. `{strays[0]}`)"
        )
    return their_name, ""


def match_blocks(
    our_root: nn.Module,
    their_root: nn.Module,
    key_map: KeyMap,
    prefixes: Iterable[str] = ("",),
    detail: str = "fine",
    inputs_of: Iterable[str] = (),
) -> tuple[list[BlockPair], list[tuple[str, str]]]:
    """Pairs of (our module, reference module) to hook, and our modules with no counterpart.

    `inputs_of` names modules of ours whose input (not output) is compared as well, e.g. CLIP's
    patch embedding, whose input is the preprocessed image.
    """
    modules = dict(our_root.named_modules())
    inverse = _inverse(key_map)
    pairs, skipped = [], []
    for name in inputs_of:
        their_name, why = counterpart(name, key_map, their_root, inverse)
        if their_name is None:
            skipped.append((f"{name} (input)", why))
        else:
            pairs.append(BlockPair(name, their_name, capture_input=True))
    for name in probed_modules(our_root, prefixes, detail):
        their_name, why = counterpart(name, key_map, their_root, inverse)
        if their_name is None:
            skipped.append((name, why))
            continue
        adapt, note = _adapter(modules[name], modules[name.rpartition(".")[0]])
        pairs.append(BlockPair(name, their_name, adapt, note))
    return pairs, skipped


# ---- recording -----------------------------------------------------------------------------------


def _first_tensor(value) -> torch.Tensor | None:
    """The tensor a module returned: itself, or the first tensor of a tuple / list / output object."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):  # diffusers' BaseOutput is an OrderedDict
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


@dataclass
class Recording:
    """What hooks saw: per key, every tensor in call order; and the order in which keys fired."""

    tensors: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def add(self, key: str, value) -> None:
        tensor = _first_tensor(value)
        if tensor is None:
            return
        # A copy in host memory: block outputs of both full-size networks would not fit a GPU.
        self.tensors.setdefault(key, []).append(tensor.detach().to("cpu", copy=True))
        if key not in self.order:
            self.order.append(key)


@contextmanager
def recording(root: nn.Module, pairs: list[BlockPair], side: str) -> Iterator[Recording]:
    """Hook the `side` ("ours" or "theirs") module of every pair under `root` while in the block.

    Keys of the recording are our module names on both sides, so the two recordings line up.
    """
    record = Recording()
    handles = []
    for pair in pairs:
        module = root.get_submodule(pair.ours if side == "ours" else pair.theirs)
        key = _key(pair)
        if pair.capture_input:

            def pre_hook(module, args, kwargs, key=key):
                record.add(key, list(args) + list(kwargs.values()))

            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:

            def hook(module, args, output, key=key):
                record.add(key, output)

            handles.append(module.register_forward_hook(hook))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def _key(pair: BlockPair) -> str:
    return f"{pair.ours} (input)" if pair.capture_input else pair.ours


def compare_blocks(
    pairs: list[BlockPair], ours: Recording, theirs: Recording, batch: int, frames: int
) -> tuple[list[Comparison], list[tuple[str, str]]]:
    """Rows in our running order (a module called k times gives k rows), and what was skipped."""
    by_key = {_key(pair): pair for pair in pairs}
    rows, skipped = [], []
    for key in ours.order:
        pair = by_key[key]
        our_tensors, their_tensors = ours.tensors[key], theirs.tensors.get(key, [])
        if len(our_tensors) != len(their_tensors):
            skipped.append(
                (
                    key,
                    f"ran {len(our_tensors)} times in svd_core, {len(their_tensors)} times in the reference",
                )
            )
            continue
        for call, (mine, reference) in enumerate(zip(our_tensors, their_tensors, strict=True)):
            if pair.adapt is not None:
                mine = pair.adapt(mine, batch, frames)
            label = key if len(our_tensors) == 1 else f"{key} (call {call + 1})"
            theirs_label = f"{pair.theirs} (input)" if pair.capture_input else pair.theirs
            if mine.shape != reference.shape:
                skipped.append(
                    (
                        label,
                        f"layouts differ: ours {tuple(mine.shape)}, reference {tuple(reference.shape)}",
                    )
                )
                continue
            rows.append(compare(label, theirs_label, mine, reference, pair.note))
    for pair in pairs:
        if _key(pair) not in ours.tensors and _key(pair) not in [s[0] for s in skipped]:
            skipped.append((_key(pair), "did not run in svd_core for this input"))
    return rows, skipped
