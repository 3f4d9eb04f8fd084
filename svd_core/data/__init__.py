"""Training and evaluation data: procedural clips whose true continuation is known
(`moving_shapes`), and clips of video files (`videos`: needs the `video` extra, PyAV)."""

from .moving_shapes import Clip, ClipParams, MovingShapes

__all__ = ["Clip", "ClipParams", "MovingShapes"]
