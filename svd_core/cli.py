"""The `svd-core` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `svd-core`, with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="svd-core", description="Stable Video Diffusion, image to video, in plain PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"svd-core {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `svd-core` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
