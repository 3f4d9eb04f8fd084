"""The `svd-core` command line: `generate` (image to video), `generate-batch`, `info`, `train`,
`eval`, `parity` and `annotate` (fps and motion of training videos).

Exit codes: 0 success, 2 bad arguments, missing files or bad checkpoints (one line on stderr),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Outputs are written atomically, so an
interrupted or terminated run leaves no broken or temporary file. Warnings are one line each.

Only the standard library is imported here at start-up; torch and the rest of svd_core are
imported inside `main`, with Ctrl-C held back until `import torch` is done (`_import_torch`), so
an early Ctrl-C is an ordinary interrupt, never a traceback or a half-imported library.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from pathlib import Path

from .version import __version__

DTYPES = ("float32", "float16", "bfloat16")
RESIZE_MODES = ("crop", "squash", "none")  # svd_core.io.RESIZE_MODES (not imported: see above)
DEFAULT_MODEL_FILE = "svd_core_tiny_demo.safetensors"
CONFIG_HELP = (
    "for a checkpoint of no official preset size: an SVDConfig JSON file (SVDConfig.to_json) or "
    "the sgm .yaml/.yml config it was trained with (default: inferred from the checkpoint)"
)
SIZE_RULE = (
    "a multiple of the model's size multiple (its VAE's times its UNet's downsampling: 64 for SVD "
    "models, 32 for the tiny demo model), at most 4096"
)
# What an interrupt leaves behind, per command (the default: nothing).
INTERRUPTED = {
    "generate-batch": "the videos finished so far are kept and listed in the output folder's "
    "manifest-rank*.jsonl; the one in progress was not written; run the same command again to "
    "resume",
    "train": "the checkpoints written so far are kept; continue with the same command and --resume",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every atomic write and `finally` block cleans up."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where a default is a value; a default of None, False or a help text
    that already says its default is left as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows the defaults; its sub-commands' parsers are of its type."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `svd-core`, with one sub-command per job."""
    parser = _Parser(
        prog="svd-core", description="Stable Video Diffusion, image to video, in plain PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"svd-core {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    generate = commands.add_parser("generate", help="make a video from one image")
    generate.add_argument("image", help="input image (png, jpg, ...)")
    generate.add_argument(
        "-o",
        "--output",
        required=True,
        help="output .mp4, .gif or .webp, or a folder for PNG frames (a folder name with a dot: "
        "end it with /)",
    )
    add_generation_flags(generate)
    generate.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed (default: a random one, printed and stored in the video's metadata)",
    )
    generate.add_argument(
        "--quiet", action="store_true", help="no progress bar and no seed line (the file has it)"
    )

    info = commands.add_parser("info", help="describe a checkpoint without loading its weights")
    info.add_argument(
        "checkpoint", help="official .safetensors file, diffusers folder or hub repo id"
    )
    info.add_argument("--variant", default=None, help="diffusers weight variant, e.g. fp16")
    info.add_argument("--config", default=None, help=CONFIG_HELP)
    _add_train_parser(commands)
    _add_eval_parser(commands)
    _add_parity_parser(commands)
    _add_generate_batch_parser(commands)
    _add_annotate_parser(commands)
    return parser


def _add_annotate_parser(commands) -> None:
    """`svd-core annotate`: fps and optical-flow motion of training videos, into a manifest."""
    annotate = commands.add_parser(
        "annotate",
        help="measure each training video's fps and motion (optical flow) into a manifest",
        description="For every video file or frames folder in VIDEOS (a folder, or a .csv/.jsonl "
        "manifest), measure its frame rate and an optical-flow motion score (OpenCV Farneback at "
        "2 fps, as SVD's data curation; svd_core.data.motion) and map the score to a "
        "motion_bucket_id, then write them to a JSONL manifest that svd_core.data.VideoClips "
        "reads. The mapping from score to bucket is our calibration, not SVD's (which is not "
        "published): see svd_core/data/motion.py. Files that cannot be read are skipped and "
        "listed at the end (--strict: the first one stops the run). Needs the video extra.",
    )
    annotate.add_argument("videos", help="folder of videos / frames folders, or a manifest")
    annotate.add_argument("-o", "--output", required=True, help="the manifest to write (.jsonl)")
    annotate.add_argument(
        "--sample-fps", type=float, default=2.0, help="frames per second the flow is computed at"
    )
    annotate.add_argument(
        "--scale",
        type=float,
        default=None,
        help="motion_bucket_id per unit of motion score (default: svd_core.data.motion."
        "BUCKET_SCALE, calibrated on the demo data; for real footage try 127 / the median score)",
    )
    annotate.add_argument("--strict", action="store_true", help="stop at the first bad file")
    annotate.add_argument("--quiet", action="store_true", help="no progress bar")


def _annotate(args: argparse.Namespace) -> int:
    import dataclasses
    import math

    from tqdm.auto import tqdm

    from .data import motion
    from .data.videos import VIDEO_SUFFIXES, read_manifest, sources_in, write_manifest
    from .io import output_folder

    output = Path(args.output)
    if output.suffix.lower() != ".jsonl":
        return _fail(f"-o {args.output!r}: the manifest is a .jsonl file")
    output_folder(output)
    source = Path(args.videos)
    if source.is_dir():
        sources = sources_in(source)
    elif source.suffix.lower() in (".csv", ".jsonl", ".json"):
        sources = read_manifest(source)
    else:
        return _fail(f"{args.videos!r} is neither a folder of videos nor a .csv/.jsonl manifest")
    if not sources:
        return _fail(
            f"{args.videos!r} holds no videos ({', '.join(VIDEO_SUFFIXES)}) or frames folders"
        )
    scale = motion.BUCKET_SCALE if args.scale is None else args.scale
    for flag, value in (("--sample-fps", args.sample_fps), ("--scale", scale)):
        if not (math.isfinite(value) and value > 0):
            return _fail(f"{flag} must be a positive number, got {value}")
    annotated, skipped = [], {}
    for entry in tqdm(sources, desc="annotating", disable=args.quiet, leave=False):
        try:
            measured = motion.measure_video(
                entry.path, entry.fps, sample_fps=args.sample_fps, scale=scale
            )
        except ValueError as error:  # VideoError: unreadable; ValueError: too short to measure
            if args.strict:
                raise
            skipped[entry.path] = " ".join(str(error).split())
            continue
        annotated.append(
            dataclasses.replace(
                entry,
                fps=measured["fps"],
                motion_score=round(measured["motion_score"], 6),
                motion_bucket_id=measured["motion_bucket_id"],
            )
        )
    if not annotated:
        return _fail(f"no video could be read; skipped: {dict(list(skipped.items())[:3])}")
    write_manifest(output, annotated)
    print(f"annotated {len(annotated)} of {len(sources)} videos into {output}")
    for path, reason in skipped.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


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


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """The flags `generate` and `generate-batch` share: the model, the sampling values, the size,
    the dtype, the device and the memory mode (`generation_arguments` maps them to SVDPipeline's
    keywords)."""
    from .sampling import SAMPLERS

    parser.add_argument(
        "--model",
        default=None,
        help="official .safetensors file, diffusers folder or hub repo id "
        "(default: the tiny demo model shipped with svd_core)",
    )
    parser.add_argument("--variant", default=None, help="diffusers weight variant, e.g. fp16")
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    add = parser.add_argument
    add("--frames", type=int, default=None, help="number of frames (default: the model's)")
    add("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    add(
        "--fps",
        type=float,
        default=None,
        help="frame rate; conditions on fps_id = fps - 1 (default: the model's, 7)",
    )
    add("--motion-bucket", type=float, default=None, help="motion_bucket_id (default: 127)")
    add("--cond-aug", type=float, default=None, help="noise augmentation (default: 0.02)")
    add(
        "--min-guidance",
        type=float,
        default=None,
        help="guidance scale of the first frame (default: the model's)",
    )
    add(
        "--max-guidance",
        type=float,
        default=None,
        help="guidance scale of the last frame (default: the model's)",
    )
    add(
        "--decode-chunk",
        type=int,
        default=None,
        help="frames the VAE decodes at a time (default: the model's)",
    )
    add(
        "--height", type=int, default=None, help=f"video height: {SIZE_RULE} (default: the model's)"
    )
    add("--width", type=int, default=None, help=f"video width: {SIZE_RULE} (default: the model's)")
    add(
        "--resize",
        choices=RESIZE_MODES,
        default="crop",
        help="fit the image to the video size: crop (the largest centred box of the video's aspect "
        "ratio, then scaled), squash (scale each side), none (the image must have the size)",
    )
    add(
        "--sampler",
        choices=tuple(SAMPLERS),
        default="euler",
        help="EDM sampler: euler (official; one UNet call per step), heun (two per step), "
        "dpmpp_2m (one per step, second order)",
    )
    add(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="UNet and image encoder dtype (the VAE stays float32); float16 and bfloat16 are for "
        "GPUs: on a CPU use float32, which is several times faster there",
    )
    add("--device", default="cpu", help="cpu, cuda, cuda:1, mps, ...")
    add(
        "--low-memory",
        action="store_true",
        help="hold one network in memory at a time, each read from the checkpoint just before it "
        "runs, and run the two guidance branches one after the other: peak memory about the "
        "UNet's weights plus one branch's activations; the same video up to float32 round-off",
    )


def generation_arguments(args: argparse.Namespace) -> dict:
    """SVDPipeline.__call__'s keywords for the flags of `add_generation_flags` (None: the model's
    default); the seed, progress and the output are each command's own."""
    return {
        "num_frames": args.frames,
        "num_steps": args.steps,
        "fps": args.fps,
        "motion_bucket_id": args.motion_bucket,
        "cond_aug": args.cond_aug,
        "min_guidance": args.min_guidance,
        "max_guidance": args.max_guidance,
        "decode_chunk_size": args.decode_chunk,
        "height": args.height,
        "width": args.width,
        "resize": args.resize,
        "sampler": args.sampler,
    }


def default_model_path() -> Path:
    """The shipped tiny demo model, used when --model is not given.

    It is package data (svd_core/weights/), so a checkout, an editable install and an installed
    wheel all have it; its model card is weights/README.md of the repository.
    """
    path = Path(__file__).resolve().parent / "weights" / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped demo model {path} is missing (svd_core installed without its package "
            "data?); reinstall svd-core, or pass --model with a checkpoint, e.g. a downloaded "
            "svd_xt.safetensors"
        )
    return path


# SVDPipeline keyword -> its flag, for errors in the command line's words
FLAGS = {
    "num_frames": "--frames",
    "num_steps": "--steps",
    "decode_chunk_size": "--decode-chunk",
    "fps": "--fps",
    "motion_bucket_id": "--motion-bucket",
    "cond_aug": "--cond-aug",
    "min_guidance": "--min-guidance",
    "max_guidance": "--max-guidance",
    "seed": "--seed",
}


def check_generation_flags(args: argparse.Namespace) -> None:
    """Check the sampling flags shared by `generate` and `generate-batch` before any model loads.

    Raises ValueError naming the flag, e.g. "--frames: num_frames must be ...".
    """
    from .pipeline import check_options

    given = {**generation_arguments(args), "seed": args.seed}
    for name, flag in FLAGS.items():
        try:
            check_options(**{name: given[name]})
        except ValueError as error:
            raise ValueError(f"{flag}: {error}") from None


def check_size_for_model(args: argparse.Namespace, source: str, config, images) -> None:
    """Check --height, --width and --resize none against the model before its weights are read.

    The model's size multiple and default size come from the checkpoint's header (or --config);
    `images` are the (1, 3, H, W) input tensors that --resize none needs at the video's size.
    """
    if args.height is None and args.width is None and args.resize != "none":
        return  # the model's own size always fits it
    from .io import check_video_size
    from .loading import inspect_checkpoint

    meta_model, _ = inspect_checkpoint(source, config=config, variant=args.variant)
    cfg = meta_model.config
    multiple = cfg.size_multiple
    factor = cfg.vae.downscale_factor
    why = f" (this model's VAE downsamples {factor}x, then its UNet {multiple // factor}x)"
    try:
        check_video_size(args.height, args.width, multiple, why)
    except ValueError as error:  # "height must be ..." or "width must be ..."
        raise ValueError(f"--{str(error).split()[0]}: {error}") from None
    height = cfg.height if args.height is None else args.height
    width = cfg.width if args.width is None else args.width
    if args.resize == "none":
        for image in images:
            if tuple(image.shape[-2:]) != (height, width):
                raise ValueError(
                    f"--resize none: the image is {image.shape[-2]}x{image.shape[-1]} (HxW) but "
                    f"the video is {height}x{width}; resize the image first, or pass --resize "
                    "crop or --resize squash"
                )


def _fail(message: str) -> int:
    print(f"svd-core: error: {message}", file=sys.stderr)
    return 2


def _config(args: argparse.Namespace):
    """The SVDConfig named by --config, or None to infer it from the checkpoint."""
    from .config import SVDConfig
    from .loading import read_sgm_yaml

    if args.config is None:
        return None
    path = Path(args.config)
    if path.suffix.lower() in (".yaml", ".yml"):
        return read_sgm_yaml(path)  # an official sgm config, e.g. svd_xt.yaml
    return SVDConfig.from_json(path)


def _generate(args: argparse.Namespace) -> int:
    import torch

    from .io import load_image, output_kind
    from .loading import load
    from .pipeline import SVDPipeline, random_seed

    # Everything that needs no weights is checked before any are read (seconds to minutes for the
    # full-size checkpoints): the image, the output path, the sampling values, the size.
    image = load_image(args.image)
    output_kind(args.output)
    check_generation_flags(args)
    source = args.model or str(default_model_path())
    config = _config(args)
    check_size_for_model(args, source, config, [image])
    model = load(
        source,
        config=config,
        dtype=torch.float32,
        device=args.device,
        variant=args.variant,
        low_memory=args.low_memory,
    )
    pipe = SVDPipeline(model, dtype=getattr(torch, args.dtype))
    seed = random_seed() if args.seed is None else args.seed
    if not args.quiet:
        print(f"seed {seed} (--seed {seed} makes this video again; the file records it)")
    video = pipe(image, seed=seed, progress=not args.quiet, **generation_arguments(args))
    path = video.save(args.output)
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

    from .evaluate import evaluate
    from .io import atomic_file, output_folder
    from .loading import load

    if args.clips < 1:
        return _fail(f"--clips must be at least 1, got {args.clips}")
    if args.steps is not None and args.steps < 1:
        return _fail(f"--steps must be at least 1, got {args.steps}")
    if args.json is not None:
        output_folder(Path(args.json))  # fail now, not after sampling
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
    batch.add_argument(
        "--format",
        choices=("mp4", "gif", "webp", "png"),
        default="mp4",
        help="video file per input, or png: a folder of PNG frames per input",
    )
    add_generation_flags(batch)
    batch.add_argument("--seed", type=int, default=0, help="input i gets seed SEED + i")
    batch.add_argument("--quiet", action="store_true", help="no per-video lines")


def _generate_batch(args: argparse.Namespace) -> int:
    """`svd-core generate-batch`: check everything cheap, join torchrun's group, run (batch.py)."""
    import torch

    from . import distributed
    from .batch import MANIFEST_NAME, BatchError, BatchSettings, generate_batch, list_inputs
    from .io import load_image, output_folder
    from .loading import load
    from .pipeline import SVDPipeline

    inputs = list_inputs(args.inputs)
    check_generation_flags(args)
    source = args.model or str(default_model_path())
    config = _config(args)
    check_size_for_model(
        args, source, config, [load_image(p) for p in inputs] if args.resize == "none" else []
    )
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchError(f"-o {args.output!r} is a file; generate-batch writes into a folder")
    # The folder, or the nearest folder above it that exists (the rest is made), is writable:
    # fail before loading a model.
    output_folder(next(p for p in (out_dir, *out_dir.parents) if p.exists()) / MANIFEST_NAME)
    settings = BatchSettings(
        **generation_arguments(args), dtype=args.dtype, base_seed=args.seed, format=args.format
    )
    current, device = distributed.init_for_device(args.device)

    def make_pipeline():
        model = load(
            source,
            config=config,
            dtype=torch.float32,
            device=device,
            variant=args.variant,
            low_memory=args.low_memory,
        )
        return SVDPipeline(model, dtype=getattr(torch, args.dtype))

    merged = generate_batch(inputs, out_dir, settings, make_pipeline, source, not args.quiet)
    if current.is_main:
        counts = [video["status"] for video in merged["videos"]]
        print(
            f"{counts.count('generated')} generated, {counts.count('skipped')} skipped "
            f"(already done) by {current.world_size} process(es); manifest: "
            f"{out_dir / MANIFEST_NAME}"
        )
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the command line shows it: one line, without torch's file and source line."""
    print(f"svd-core: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _terminate(signum, frame) -> None:
    raise Terminated()


def _import_torch() -> None:
    """Import torch (and numpy) with Ctrl-C held back until the import is done.

    An interrupt in the middle of `import torch` can leave half-imported modules behind (some
    libraries swallow the exception inside their own imports: numpy without `np.flexible`, say),
    and the run then fails much later with a strange traceback. So SIGINT only sets a flag here,
    and is raised as KeyboardInterrupt once the import has finished (a second or two at most).
    """
    if threading.current_thread() is not threading.main_thread():
        import torch  # noqa: F401  (only the main thread can hold signals back)

        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `svd-core` console script; returns the exit code."""
    # SIGTERM (kill, a job scheduler) unwinds like Ctrl-C, so atomic writes remove their temporary
    # files; Python lets only the main thread set a handler.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    command = None
    try:
        _import_torch()
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            parser = build_parser()
            args = parser.parse_args(argv)
            command = args.command
            if command is None:
                parser.print_help()
                return 0
            return _run(args)
    except KeyboardInterrupt as interrupt:
        what = "terminated" if isinstance(interrupt, Terminated) else "interrupted"
        left = INTERRUPTED.get(command, "no output was written")
        print(f"svd-core: {what}; {left}", file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; bad values, checkpoints, files and NaNs become one-line errors."""
    from .distributed import check_device
    from .pipeline import NumericalError

    handlers = {
        "generate": _generate,
        "info": _info,
        "train": _train,
        "eval": _eval,
        "parity": _parity,
        "generate-batch": _generate_batch,
        "annotate": _annotate,
    }
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device)  # before anything loads; a one-line error naming the choices
        return handlers[args.command](args)
    except (ValueError, OSError, NumericalError) as error:
        return _fail(" ".join(str(error).split()))


if __name__ == "__main__":
    sys.exit(main())
