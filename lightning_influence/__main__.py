"""Console entry point: ``lightning-influence demo`` (also ``python -m lightning_influence``)."""

from __future__ import annotations

import argparse
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="lightning-influence", description="Unlearning with generalized influence functions."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from lightning_influence.demos.demo import add_arguments, main_demo

    demo = sub.add_parser(
        "demo", help="train a small CNN, unlearn one class, compare with a retrain"
    )
    add_arguments(demo)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        main_demo(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"lightning-influence: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
