"""`svd-core parity`: the command-line side of a parity run (arguments in, report out, exit code)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..io import output_folder
from .reference import ReferenceUnavailableError, import_reference
from .report import REPORT_SUFFIXES
from .run import (
    COMPONENTS,
    DTYPES,
    ParityError,
    ParityOptions,
    load_for_parity,
    model_config,
    parse_size,
    run_parity,
)

EXIT_PASSED, EXIT_FAILED = 0, 1  # bad arguments exit with 2 (svd_core.cli)


def _tolerances(values: list[str] | None) -> dict[str, float]:
    """--tolerance VALUE (every component) or COMPONENT=VALUE, repeatable."""
    tolerances: dict[str, float] = {}
    for text in values or []:
        name, _, number = text.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            raise ParityError(
                f"--tolerance {text!r}: expected a number or COMPONENT=NUMBER, e.g. unet=1e-3"
            ) from None
        for component in [name] if name else COMPONENTS:
            tolerances[component] = value
    return tolerances


def options_from_args(args: argparse.Namespace) -> ParityOptions:
    """ParityOptions from the parsed command line; bad values raise ParityError."""
    if args.dtype not in DTYPES:
        raise ParityError(f"--dtype must be one of {list(DTYPES)}, got {args.dtype!r}")
    height, width = parse_size(args.size) if args.size is not None else (None, None)
    components = COMPONENTS
    if args.components is not None:
        components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    if args.image is not None and not Path(args.image).is_file():
        raise ParityError(f"image file {args.image!r} does not exist")
    if args.frames is not None and args.frames < 1:
        raise ParityError(f"--frames must be at least 1, got {args.frames}")
    return ParityOptions(
        height=height,
        width=width,
        num_frames=args.frames,
        num_steps=args.steps,
        seed=args.seed,
        dtype=DTYPES[args.dtype],
        numerics=args.numerics,
        components=components,
        tolerances=_tolerances(args.tolerance),
        detail=args.detail,
        image=args.image,
        against=args.against,
        known_differences=args.known_differences,
    )


def _report_paths(values: list[str] | None) -> list[Path]:
    paths = [Path(value) for value in values or []]
    for path in paths:
        if path.suffix.lower() not in REPORT_SUFFIXES:
            raise ParityError(f"--report {str(path)!r}: use a .md (Markdown) or .json file name")
        output_folder(path)  # fail now, not after the comparison
    return paths


def run_command(args: argparse.Namespace, config=None) -> int:
    """Run `svd-core parity` with parsed arguments and the SVDConfig of --config (None: inferred).

    Returns 0 (every component within its tolerance) or 1 (some component beyond it). Bad
    arguments raise ParityError, a ValueError: exit code 2 with one line in svd_core.cli.
    """
    options = options_from_args(args)
    reports = _report_paths(args.report)
    try:
        import_reference()
    except ReferenceUnavailableError as error:
        raise ParityError(str(error)) from None
    # Check the size against the model before reading any weights.
    options.resolved(model_config(args.model, config, args.variant))
    model = load_for_parity(args.model, seed=options.seed, config=config, variant=args.variant)
    report = run_parity(model, options, source=args.model, device=args.device)
    print(report.to_markdown(blocks=False), end="")
    for path in reports:
        report.save(path)
        print(f"wrote {path}", file=sys.stderr)
    return EXIT_PASSED if report.passed else EXIT_FAILED
