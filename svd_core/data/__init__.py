"""Training and evaluation data: procedural clips whose true continuation is known."""

from .moving_shapes import Clip, ClipParams, MovingShapes

__all__ = ["Clip", "ClipParams", "MovingShapes"]
