"""svd_core: a readable, exact and fast PyTorch reimplementation of Stable Video Diffusion.

The public names below are imported on first use (PEP 562), so `import svd_core` is instant and
`svd-core --help` or a Ctrl-C in the first second never waits for (or breaks inside) `import
torch`: `svd_core.load`, `from svd_core import SVDPipeline` and `svd_core.io` work as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from .version import __version__

# public name -> the module (inside svd_core) that defines it
_PUBLIC = {
    "CheckpointError": "loading",
    "ConfigError": "config",
    "ImageEncoderConfig": "config",
    "NumericalError": "pipeline",
    "SVDConfig": "config",
    "SVDModel": "model",
    "SVDPipeline": "pipeline",
    "UNetConfig": "config",
    "VAEConfig": "config",
    "Video": "pipeline",
    "embed_added": "nn.embeddings",
    "load": "loading",
    "save": "loading",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ImageEncoderConfig",
    "NumericalError",
    "SVDConfig",
    "SVDModel",
    "SVDPipeline",
    "UNetConfig",
    "VAEConfig",
    "Video",
    "__version__",
    "embed_added",
    "load",
    "save",
]

if TYPE_CHECKING:  # what readers' tools (type checkers, IDEs) see
    from .config import ConfigError, ImageEncoderConfig, SVDConfig, UNetConfig, VAEConfig
    from .loading import CheckpointError, load, save
    from .model import SVDModel
    from .nn.embeddings import embed_added
    from .pipeline import NumericalError, SVDPipeline, Video


def __getattr__(name: str):
    """A public name (imported from its module on first use) or a submodule (`svd_core.io`)."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # found once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
