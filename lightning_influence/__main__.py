"""Console entry point: ``lightning-influence demo`` and ``lightning-influence unlearn``
(also ``python -m lightning_influence``)."""

from __future__ import annotations

import argparse
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["unlearn"]:  # its own LightningCLI-style parser (class paths, YAML)
        from lightning_influence.callbacks.unlearn_command import main as main_unlearn

        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        return main_unlearn(argv[1:])
    parser = argparse.ArgumentParser(
        prog="lightning-influence", description="Unlearning with generalized influence functions."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from lightning_influence.demos.demo import add_arguments, main_demo

    demo = sub.add_parser(
        "demo", help="train a small CNN, unlearn one class, compare with a retrain"
    )
    add_arguments(demo)
    sub.add_parser(
        "unlearn",
        help="unlearn a saved checkpoint (see `lightning-influence unlearn --help`)",
        add_help=False,
    )
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
