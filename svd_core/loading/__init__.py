"""Checkpoint layouts (official single file, diffusers folders, hub ids) and their key maps; sgm
YAML configs (`read_sgm_yaml`)."""

from .api import LoadReport, inspect_checkpoint, load, save
from .files import CheckpointError
from .keymap import Cat, Conv1x1, KeyMap, KeyMapError, Same, Transpose
from .sgm_yaml import read_sgm_yaml

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
    "read_sgm_yaml",
    "save",
]
