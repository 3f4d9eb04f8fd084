"""Checkpoint layouts (official single file, diffusers folders, hub ids) and their key maps."""

from .keymap import Cat, Conv1x1, KeyMap, KeyMapError, Same, Transpose

__all__ = ["Cat", "Conv1x1", "KeyMap", "KeyMapError", "Same", "Transpose"]
