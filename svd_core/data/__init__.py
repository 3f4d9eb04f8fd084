"""Training and evaluation data: procedural clips whose true continuation is known
(`moving_shapes`), clips of video files (`videos`) and their optical-flow motion (`motion`); the
last two need the `video` extra (PyAV, OpenCV)."""

from .moving_shapes import Clip, ClipParams, MovingShapes

__all__ = ["Clip", "ClipParams", "MovingShapes"]
