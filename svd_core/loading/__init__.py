"""Checkpoint layouts (official single file, diffusers folders, hub ids) and their key maps."""

from .api import LoadReport, inspect_checkpoint, load, save
from .files import CheckpointError
from .keymap import Cat, Conv1x1, KeyMap, KeyMapError, Same, Transpose

__all__ = [
    "Cat",
    "CheckpointError",
    "Conv1x1",
    "KeyMap",
    "KeyMapError",
    "LoadReport",
    "Same",
    "Transpose",
    "inspect_checkpoint",
    "load",
    "save",
]
