"""`zero_module`: the zero initialization of the last layer of a residual branch."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

Module = TypeVar("Module", bound=nn.Module)


def zero_module(module: Module) -> Module:
    """Zero every parameter of `module` (in place) and return it, marked `module.zero_init = True`.

    Applied at construction to the last layer of a residual branch, it makes the block start as its
    skip path (improved-diffusion's and sgm's `zero_module`; the constructors that call it say
    which layers, and where the references differ). Loading a checkpoint replaces the zeros;
    `svd_core.train.init_for_training` re-initializes every other layer and puts the marked ones
    back to zero.
    """
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    module.zero_init = True
    return module
