"""The whole SVD model: the three networks under one module, as `svd_core.load` returns it.

A model loaded with `svd_core.load(..., low_memory=True)` holds no weights at first: its parameters
are placeholders on the meta device (shape and dtype only), and each part (`PARTS`) reads its
weights from the checkpoint only inside `with model.resident(part):`, and gives them back when the
block ends. SVDPipeline enters one part at a time, so the peak memory is about the largest part
(the UNet) plus its activations. For a plain model `resident` does nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .clip import ImageEncoder
from .config import SVDConfig
from .unet import UNet
from .vae import VAE

# The parts a low-memory model holds in memory one at a time, each with its submodules. The VAE is
# two parts: its encoder makes the conditioning latent before sampling, its decoder runs after.
# (post_quant_conv exists only in the image-decoder variant of the VAE.)
PARTS = {
    "image_encoder": ("image_encoder",),
    "vae_encoder": ("vae.encoder", "vae.quant_conv"),
    "unet": ("unet",),
    "vae_decoder": ("vae.post_quant_conv", "vae.decoder"),
}


class NotResidentError(RuntimeError):
    """A part of a low-memory model was called outside `with model.resident(part):`."""


def _require_resident(part: str, module: nn.Module, args) -> None:
    """Forward pre-hook of a low-memory model: refuse to run on placeholder (meta) weights.

    A convolution with meta weights on a real input does not fail in torch: it returns garbage.
    """
    parameter = next(module.parameters(), None)
    if parameter is not None and parameter.is_meta:
        raise NotResidentError(
            f"the model's {part} has no weights in memory: this model was loaded with "
            f"low_memory=True, which reads a part's weights only inside "
            f"`with model.resident({part!r}):` (SVDPipeline does this for you); or load it "
            "without low_memory"
        )


class SVDModel(nn.Module):
    """The spatio-temporal UNet, the VAE and the CLIP image encoder of one SVD configuration.

    Attributes: `config` (SVDConfig), `unet`, `vae`, `image_encoder`; `lazy_weights`: None, or
    where a low-memory model reads its weights from (see the module docstring). Build on the meta
    device (`with torch.device("meta"): SVDModel(cfg)`) to inspect full-size shapes without memory.
    """

    def __init__(self, config: SVDConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(config.unet)
        self.vae = VAE(config.vae)
        self.image_encoder = ImageEncoder(config.image_encoder)
        self.lazy_weights = None
        self._resident_count: dict[str, int] = {}

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component and in total."""
        counts = {
            name: sum(p.numel() for p in getattr(self, name).parameters())
            for name in ("unet", "vae", "image_encoder")
        }
        counts["total"] = sum(counts.values())
        return counts

    @property
    def low_memory(self) -> bool:
        """Whether the weights are read part by part, inside `resident` (load(low_memory=True))."""
        return self.lazy_weights is not None

    def part_modules(self, part: str) -> list[nn.Module]:
        """The submodules of one of `PARTS` that this model has (in the order of PARTS)."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {tuple(PARTS)}, got {part!r}")
        modules = dict(self.named_modules())
        return [modules[name] for name in PARTS[part] if name in modules]

    def use_lazy_weights(self, lazy_weights) -> None:
        """Make this a low-memory model whose parameters are meta placeholders until needed.

        lazy_weights: an object with `load(model, module_names)` (read those submodules' weights
        into them) and `release(model, module_names)` (put placeholders back), as
        `svd_core.loading.api.LazyWeights`; `svd_core.load(..., low_memory=True)` calls this.
        Each part's modules and their children get a check that stops a call outside `resident`.
        """
        if self.lazy_weights is not None:
            raise ValueError("this model already reads its weights lazily")
        self.lazy_weights = lazy_weights
        for part in PARTS:
            for root in self.part_modules(part):
                for module in (root, *root.children()):  # every entry point: encode_pixels, ...
                    module.register_forward_pre_hook(functools.partial(_require_resident, part))

    @contextmanager
    def resident(self, *parts: str) -> Iterator[None]:
        """Hold the weights of `parts` (names of PARTS) in memory for the duration of the block.

        A low-memory model reads them from the checkpoint on entry (a memory map: pages are read
        when first used) and drops them on exit, so the memory goes back to the system; blocks
        may nest (counted per part). A plain model holds everything always: this does nothing.
        """
        for part in parts:
            if part not in PARTS:
                raise ValueError(f"part must be one of {tuple(PARTS)}, got {part!r}")
        if self.lazy_weights is None:
            yield
            return
        entered = []
        try:
            for part in parts:
                count = self._resident_count.get(part, 0)
                self._resident_count[part] = count + 1
                entered.append(part)
                if count == 0:
                    self.lazy_weights.load(self, PARTS[part])
            yield
        finally:
            for part in reversed(entered):
                self._resident_count[part] -= 1
                if self._resident_count[part] == 0:
                    self.lazy_weights.release(self, PARTS[part])
