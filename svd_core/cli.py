"""The `svd-core` command line: `generate` (image to video) and `info` (what a checkpoint holds).

Exit codes: 0 success, 2 bad arguments, missing files or bad checkpoints (one line on stderr),
130 interrupted. Outputs are written atomically, so an interrupted run leaves no broken file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .io import output_folder
from .pipeline import NumericalError

DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_MODEL_FILE = "svd_core_tiny_demo.safetensors"
CONFIG_HELP = (
    "SVDConfig JSON file (SVDConfig.to_json) for a checkpoint of no official preset size "
    "(default: inferred from the checkpoint)"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `svd-core`, with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="svd-core", description="Stable Video Diffusion, image to video, in plain PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"svd-core {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    generate = commands.add_parser("generate", help="make a video from one image")
    generate.add_argument("image", help="input image (png, jpg, ...)")
    generate.add_argument(
        "-o", "--output", required=True, help="output .mp4, .gif, .webp, or a folder for PNGs"
    )
    generate.add_argument(
        "--model",
        default=None,
        help="official .safetensors file, diffusers folder or hub repo id "
        "(default: the tiny demo model shipped in weights/)",
    )
    generate.add_argument("--variant", default=None, help="diffusers weight variant, e.g. fp16")
    generate.add_argument("--config", default=None, help=CONFIG_HELP)
    generate.add_argument(
        "--frames", type=int, default=None, help="number of frames (default: the model's)"
    )
    generate.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: the model's)"
    )
    generate.add_argument(
        "--fps", type=float, default=None, help="frame rate; conditions on fps_id = fps - 1"
    )
    generate.add_argument(
        "--motion-bucket", type=float, default=None, help="motion_bucket_id (default 127)"
    )
    generate.add_argument(
        "--cond-aug", type=float, default=None, help="noise augmentation (default 0.02)"
    )
    generate.add_argument(
        "--min-guidance", type=float, default=None, help="guidance scale of the first frame"
    )
    generate.add_argument(
        "--max-guidance", type=float, default=None, help="guidance scale of the last frame"
    )
    generate.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    generate.add_argument("--decode-chunk", type=int, default=None, help="frames decoded at a time")
    generate.add_argument("--height", type=int, default=None, help="video height, a multiple of 64")
    generate.add_argument("--width", type=int, default=None, help="video width, a multiple of 64")
    generate.add_argument("--resize", choices=("crop", "squash", "none"), default="crop")
    generate.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="UNet and image encoder dtype"
    )
    generate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    generate.add_argument("--sampler", choices=("euler", "heun", "dpmpp_2m"), default="euler")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")

    info = commands.add_parser("info", help="describe a checkpoint without loading its weights")
    info.add_argument(
        "checkpoint", help="official .safetensors file, diffusers folder or hub repo id"
    )
    info.add_argument("--variant", default=None)
    info.add_argument("--config", default=None, help=CONFIG_HELP)
    return parser


def default_model_path() -> Path:
    """The shipped tiny demo model (weights/ of a source checkout), used when --model is not given."""
    path = Path(__file__).resolve().parents[1] / "weights" / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped demo model {path} is missing (svd_core installed without its weights/ "
            "folder?); pass --model with a checkpoint, e.g. a downloaded svd_xt.safetensors"
        )
    return path


def _fail(message: str) -> int:
    print(f"svd-core: error: {message}", file=sys.stderr)
    return 2


def _config(args: argparse.Namespace):
    """The SVDConfig named by --config, or None to infer it from the checkpoint."""
    from .config import SVDConfig

    return None if args.config is None else SVDConfig.from_json(Path(args.config))


def _generate(args: argparse.Namespace) -> int:
    import torch

    from .loading import load
    from .pipeline import SVDPipeline

    if not Path(args.image).is_file():
        return _fail(f"image file {args.image!r} does not exist")
    output = Path(args.output)
    if output.suffix and output.suffix.lower() not in (".mp4", ".gif", ".webp"):
        return _fail(
            f"output {args.output!r}: use .mp4, .gif, .webp, or a folder name for PNG frames"
        )
    output_folder(output)  # fail now, not after sampling

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"device {args.device!r} asked for, but no CUDA GPU is available")
    dtype = getattr(torch, args.dtype)
    model = load(
        args.model or str(default_model_path()),
        config=_config(args),
        dtype=torch.float32,
        device=args.device,
        variant=args.variant,
    )
    pipe = SVDPipeline(model, dtype=dtype)
    video = pipe(
        args.image,
        num_frames=args.frames,
        num_steps=args.steps,
        fps=args.fps,
        motion_bucket_id=args.motion_bucket,
        cond_aug=args.cond_aug,
        min_guidance=args.min_guidance,
        max_guidance=args.max_guidance,
        seed=args.seed,
        decode_chunk_size=args.decode_chunk,
        height=args.height,
        width=args.width,
        resize=args.resize,
        sampler=args.sampler,
        progress=not args.quiet,
    )
    path = video.save(output)
    print(f"wrote {len(video)} frames at {video.fps:g} fps to {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .loading import inspect_checkpoint

    model, report = inspect_checkpoint(args.checkpoint, config=_config(args), variant=args.variant)
    print(report.summary())
    counts = model.parameter_counts()
    for name, count in counts.items():
        print(f"params:  {name:<14}{count:>15,}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `svd-core` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"generate": _generate, "info": _info}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("svd-core: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, NumericalError) as error:  # bad values, checkpoints, files, NaNs
        return _fail(" ".join(str(error).split()))


if __name__ == "__main__":
    sys.exit(main())
