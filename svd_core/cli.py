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
    "for a checkpoint of no official preset size: an SVDConfig JSON file (SVDConfig.to_json) or "
    "the sgm .yaml/.yml config it was trained with (default: inferred from the checkpoint)"
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
    generate.add_argument(
        "--low-memory",
        action="store_true",
        help="hold one network in memory at a time, each read from the checkpoint just before it "
        "runs, and run the two guidance branches one after the other: peak memory about the "
        "UNet's weights plus one branch's activations; the same video up to float32 round-off",
    )
    generate.add_argument("--quiet", action="store_true", help="no progress bar")

    info = commands.add_parser("info", help="describe a checkpoint without loading its weights")
    info.add_argument(
        "checkpoint", help="official .safetensors file, diffusers folder or hub repo id"
    )
    info.add_argument("--variant", default=None)
    info.add_argument("--config", default=None, help=CONFIG_HELP)
    _add_train_parser(commands)
    _add_eval_parser(commands)
    _add_parity_parser(commands)
    _add_generate_batch_parser(commands)
    return parser


def _add_train_parser(commands) -> None:
    """`svd-core train vae|unet|export`: train the tiny demo model from scratch (svd_core.train)."""
    train = commands.add_parser(
        "train", help="train the tiny demo model: vae, then unet, then export"
    )
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, what in (("vae", "the autoencoder"), ("unet", "the UNet and image encoder")):
        stage = stages.add_parser(name, help=f"train {what} (defaults: svd_core.train)")
        stage.add_argument(
            "--out", required=True, help="run folder (the unet stage reads its vae/)"
        )
        stage.add_argument("--steps", type=int, default=None)
        stage.add_argument("--batch-size", type=int, default=None, help="clips per step")
        stage.add_argument("--lr", type=float, default=None, help="peak learning rate")
        stage.add_argument("--warmup-steps", type=int, default=None)
        stage.add_argument("--ema-decay", type=float, default=None, help="0 = no EMA")
        stage.add_argument("--seed", type=int, default=None)
        stage.add_argument("--checkpoint-every", type=int, default=None, help="steps")
        stage.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
        stage.add_argument("--quiet", action="store_true", help="no progress bar")
        stage.add_argument(
            "--device", default="cpu", help="cpu or cuda (cuda:LOCAL_RANK per rank under torchrun)"
        )
        if name == "vae":
            stage.add_argument("--crop-size", type=int, default=None, help="0 = whole frames")
            stage.add_argument(
                "--clip-frames", type=int, default=None, help="consecutive frames per clip; 0 = all"
            )
            stage.add_argument("--kl-weight", type=float, default=None)
            stage.add_argument(
                "--detail-weight",
                type=float,
                default=None,
                help="extra loss weight on edges and small shapes; 0 = plain means",
            )
            # For tests and experiments: the model size (the unet stage takes it from vae/).
            stage.add_argument("--preset", choices=("tiny_demo", "tiny"), default="tiny_demo")
            stage.add_argument("--config", default=None, help=argparse.SUPPRESS)
        else:
            stage.add_argument("--pool-size", type=int, default=None, help="clips encoded once")
            stage.add_argument("--cond-dropout", type=float, default=None)
            stage.add_argument(
                "--p-mean",
                type=float,
                default=None,
                help="mean of ln sigma (training noise levels)",
            )
            stage.add_argument("--p-std", type=float, default=None, help="std of ln sigma")
            stage.add_argument(
                "--freeze-image-encoder", action="store_true", help="as the official model"
            )
            stage.add_argument(
                "--gradient-checkpointing", action="store_true", help="less memory, slower"
            )
            stage.add_argument(
                "--fsdp",
                action="store_true",
                help="under torchrun: shard the UNet and image encoder over the ranks (FSDP) "
                "instead of replicating them (DDP); same checkpoints",
            )
    export = stages.add_parser("export", help="write a run's EMA weights as one .safetensors file")
    export.add_argument("run_dir", help="run folder with vae/ and unet/")
    export.add_argument("-o", "--output", required=True, help="output .safetensors file")
    export.add_argument("--dtype", choices=DTYPES, default="float32")


def default_model_path() -> Path:
    """The shipped tiny demo model (weights/ of a source checkout), used when --model is not given."""
    path = Path(__file__).resolve().parents[1] / "weights" / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped demo model {path} is missing (svd_core installed without its weights/ "
            "folder?); pass --model with a checkpoint, e.g. a downloaded svd_xt.safetensors"
        )
    return path


def check_generation_flags(args: argparse.Namespace) -> None:
    """Check the sampling flags shared by `generate` and `generate-batch` before any model loads.

    Raises ValueError naming the flag, e.g. "--frames: num_frames must be ...".
    """
    from .pipeline import check_options

    for flag, name, value in (
        ("--frames", "num_frames", args.frames),
        ("--steps", "num_steps", args.steps),
        ("--decode-chunk", "decode_chunk_size", args.decode_chunk),
        ("--fps", "fps", args.fps),
        ("--motion-bucket", "motion_bucket_id", args.motion_bucket),
        ("--cond-aug", "cond_aug", args.cond_aug),
        ("--min-guidance", "min_guidance", args.min_guidance),
        ("--max-guidance", "max_guidance", args.max_guidance),
        ("--seed", "seed", args.seed),
    ):
        try:
            check_options(**{name: value})
        except ValueError as error:
            raise ValueError(f"{flag}: {error}") from None


def _fail(message: str) -> int:
    print(f"svd-core: error: {message}", file=sys.stderr)
    return 2


def _config(args: argparse.Namespace):
    """The SVDConfig named by --config, or None to infer it from the checkpoint."""
    from .config import SVDConfig

    if args.config is None:
        return None
    path = Path(args.config)
    if path.suffix.lower() in (".yaml", ".yml"):
        return SVDConfig.from_sgm_yaml(path)  # an official sgm config, e.g. svd_xt.yaml
    return SVDConfig.from_json(path)


def _generate(args: argparse.Namespace) -> int:
    import torch

    from .io import VAE_MULTIPLE, check_video_size, load_image
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
    # Everything that needs no model is checked before loading one (seconds to minutes for the
    # full-size checkpoints): the image, the sampling values, the size up to the model's multiple.
    image = load_image(args.image)
    check_generation_flags(args)
    check_video_size(args.height, args.width, VAE_MULTIPLE)  # the model's multiple: after loading

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"device {args.device!r} asked for, but no CUDA GPU is available")
    dtype = getattr(torch, args.dtype)
    model = load(
        args.model or str(default_model_path()),
        config=_config(args),
        dtype=torch.float32,
        device=args.device,
        variant=args.variant,
        low_memory=args.low_memory,
    )
    pipe = SVDPipeline(model, dtype=dtype)
    video = pipe(
        image,
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


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from . import train
    from .config import SVDConfig

    if args.stage == "export":
        path = train.export(args.run_dir, args.output, dtype=getattr(torch, args.dtype))
        print(f"wrote {path}")
        return 0
    names = ("steps", "batch_size", "lr", "warmup_steps", "ema_decay", "seed", "checkpoint_every")
    names += (
        ("crop_size", "clip_frames", "kl_weight", "detail_weight")
        if args.stage == "vae"
        else ("pool_size", "cond_dropout", "p_mean", "p_std")
    )
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.stage == "vae":
        tc = dataclasses.replace(train.VAETrainConfig(), **given)
        cfg = _config(args) or getattr(SVDConfig, args.preset)()
        result = train.train_vae(
            args.out, cfg, tc, resume=args.resume, progress=not args.quiet, device=args.device
        )
        extra = f", scaling_factor {result['scaling_factor']:.4f}"
    else:
        given["train_image_encoder"] = not args.freeze_image_encoder
        given["gradient_checkpointing"] = args.gradient_checkpointing
        tc = dataclasses.replace(train.UNetTrainConfig(), **given)
        result = train.train_unet(
            args.out,
            tc,
            resume=args.resume,
            progress=not args.quiet,
            device=args.device,
            fsdp=args.fsdp,
        )
        extra = ""
    times, losses = result["step_times"], result["losses"]
    if times:
        tail = losses[-min(len(losses), 20) :]
        print(
            f"{args.stage}: {len(times)} steps, {sum(times) / len(times):.3f} s/step, "
            f"loss (mean of last {len(tail)}) {sum(tail) / len(tail):.4f}{extra}"
        )
    return 0


def _add_eval_parser(commands) -> None:
    """`svd-core eval`: score a model on held-out moving-shape clips (svd_core.evaluate)."""
    evaluate = commands.add_parser(
        "eval", help="score a model on held-out moving-shape clips against the static baseline"
    )
    evaluate.add_argument(
        "--model", required=True, help="official .safetensors file, diffusers folder or hub repo id"
    )
    evaluate.add_argument("--variant", default=None, help="diffusers weight variant, e.g. fp16")
    evaluate.add_argument("--config", default=None, help=CONFIG_HELP)
    evaluate.add_argument("--clips", type=int, default=32, help="held-out clips (default 32)")
    evaluate.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: the model's)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="clip i is sampled with seed + i")
    evaluate.add_argument("--json", default=None, help="also write the full report to this file")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")


def _eval(args: argparse.Namespace) -> int:
    import json

    import torch

    from .evaluate import evaluate
    from .io import atomic_file
    from .loading import load

    if args.clips < 1:
        return _fail(f"--clips must be at least 1, got {args.clips}")
    if args.steps is not None and args.steps < 1:
        return _fail(f"--steps must be at least 1, got {args.steps}")
    if args.json is not None:
        output_folder(Path(args.json))  # fail now, not after sampling
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"device {args.device!r} asked for, but no CUDA GPU is available")
    model = load(args.model, config=_config(args), device=args.device, variant=args.variant)
    report = evaluate(
        model, num_clips=args.clips, num_steps=args.steps, seed=args.seed, progress=not args.quiet
    )
    print(report.summary())
    if args.json is not None:
        with atomic_file(args.json, suffix=".json") as temporary:
            Path(temporary).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _add_parity_parser(commands) -> None:
    """`svd-core parity`: compare svd_core with diffusers on the same weights (svd_core.parity)."""
    parity = commands.add_parser(
        "parity",
        help="compare svd_core with diffusers on the same weights, component by component",
        description="Load the same weights into svd_core and diffusers, feed both the same inputs "
        "and compare the image encoder, VAE encoder, UNet, VAE decoder, one sampler step and a "
        "short sampling run, block by block inside the networks. Exit code 0: every component "
        "within its tolerance; 1: some component beyond it; 2: bad arguments.",
    )
    parity.add_argument(
        "--model",
        required=True,
        help="official .safetensors file, diffusers folder, hub repo id, or random:PRESET for "
        "seeded random weights (random:tiny, random:tiny_demo, random:svd, random:svd_xt, ...)",
    )
    parity.add_argument("--against", default="diffusers", help="reference (only: diffusers)")
    parity.add_argument(
        "--dtype",
        default="float32",
        help="UNet and image encoder: float32, float16, bfloat16, or float64 (network components "
        "only: image_encoder, vae_encode, unet, vae_decode)",
    )
    parity.add_argument(
        "--size", default=None, help="HEIGHTxWIDTH (default: the model's, 128x128 at full size)"
    )
    parity.add_argument("--frames", type=int, default=None, help="default min(model's, 8)")
    parity.add_argument("--steps", type=int, default=3, help="steps of the sampling run")
    parity.add_argument("--seed", type=int, default=0, help="inputs (and random weights)")
    parity.add_argument(
        "--numerics",
        default="diffusers",
        help="our side: diffusers (its choices where the official code differs; default) or "
        "official (svd_core's default numerics)",
    )
    parity.add_argument(
        "--tolerance",
        action="append",
        help="relative tolerance: NUMBER for every component or COMPONENT=NUMBER; repeatable",
    )
    parity.add_argument(
        "--components",
        default=None,
        help="comma-separated subset of image_encoder, vae_encode, unet, vae_decode, "
        "sampler_step, sampling_run (default: all)",
    )
    parity.add_argument("--detail", default="fine", help="fine (default) or blocks")
    parity.add_argument("--image", default=None, help="conditioning image (default: synthetic)")
    parity.add_argument(
        "--report", action="append", help="write the report: .md or .json; repeatable"
    )
    parity.add_argument(
        "--known-differences",
        action="store_true",
        help="also measure the documented official-vs-diffusers differences",
    )
    parity.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parity.add_argument("--variant", default=None, help="diffusers weight variant, e.g. fp16")
    parity.add_argument("--config", default=None, help=CONFIG_HELP)


def _parity(args: argparse.Namespace) -> int:
    from .parity.command import run_command

    return run_command(args, config=_config(args))


def _add_generate_batch_parser(commands) -> None:
    """`svd-core generate-batch`: many images to videos, sharded over torchrun ranks (svd_core.batch)."""
    batch = commands.add_parser(
        "generate-batch",
        help="make videos from a folder or list of images; shards over torchrun processes",
        description="One video per input image, input i with seed --seed + i. Run it as is, or "
        "under `torchrun --nproc-per-node N -m svd_core.cli generate-batch ...` to split the "
        "inputs over N processes (one model each; on CUDA rank r uses cuda:LOCAL_RANK). "
        "Resumable: finished outputs listed in OUT_DIR's manifest are skipped.",
    )
    batch.add_argument("inputs", help="folder of png/jpg/webp images, or a text file of paths")
    batch.add_argument("-o", "--output", required=True, help="output folder")
    batch.add_argument("--format", choices=("mp4", "gif", "webp", "png"), default="mp4")
    batch.add_argument("--model", default=None, help="as for generate (default: the tiny demo)")
    batch.add_argument("--variant", default=None, help="diffusers weight variant, e.g. fp16")
    batch.add_argument("--config", default=None, help=CONFIG_HELP)
    batch.add_argument("--frames", type=int, default=None)
    batch.add_argument("--steps", type=int, default=None)
    batch.add_argument("--fps", type=float, default=None)
    batch.add_argument("--motion-bucket", type=float, default=None)
    batch.add_argument("--cond-aug", type=float, default=None)
    batch.add_argument("--min-guidance", type=float, default=None)
    batch.add_argument("--max-guidance", type=float, default=None)
    batch.add_argument("--seed", type=int, default=0, help="input i gets seed SEED + i (default 0)")
    batch.add_argument("--decode-chunk", type=int, default=None)
    batch.add_argument("--height", type=int, default=None)
    batch.add_argument("--width", type=int, default=None)
    batch.add_argument("--resize", choices=("crop", "squash", "none"), default="crop")
    batch.add_argument("--dtype", choices=DTYPES, default="float32")
    batch.add_argument("--device", default="cpu", help="cpu or cuda (cuda:LOCAL_RANK per rank)")
    batch.add_argument("--sampler", choices=("euler", "heun", "dpmpp_2m"), default="euler")
    batch.add_argument("--quiet", action="store_true", help="no per-video lines")


def _generate_batch(args: argparse.Namespace) -> int:
    from .batch import run_command

    return run_command(args, config=_config(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `svd-core` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {
        "generate": _generate,
        "info": _info,
        "train": _train,
        "eval": _eval,
        "parity": _parity,
        "generate-batch": _generate_batch,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("svd-core: interrupted; no output was written", file=sys.stderr)
        return 130
    except (ValueError, OSError, NumericalError) as error:  # bad values, checkpoints, files, NaNs
        return _fail(" ".join(str(error).split()))


if __name__ == "__main__":
    sys.exit(main())
