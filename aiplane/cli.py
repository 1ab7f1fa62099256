"""The ``aiplane`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from aiplane import __version__, manifests
from crds import RESOURCES
from crds.generate import render

EXAMPLE_DIR = Path("examples/claims-triage")


def _cmd_crds(_: argparse.Namespace) -> int:
    """Print the CRDs, ready for ``aiplane crds | kubectl apply -f -``."""
    sys.stdout.write("---\n".join(render(resource) for resource in RESOURCES))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        resources = manifests.load(args.paths)
    except manifests.ManifestError as error:
        print(f"invalid: {error}", file=sys.stderr)
        return 1
    for resource in resources:
        print(f"valid: {resource.KIND}/{resource.metadata.get('name', '?')}")
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    """The embedded default. At this stage it checks the example and reports which parts exist."""
    try:
        resources = manifests.load([args.examples])
    except manifests.ManifestError as error:
        print(f"invalid example: {error}", file=sys.stderr)
        return 1
    print(f"aiplane {__version__}: embedded mode\n")
    print("Resources (aiplane.io/v1alpha1):")
    for resource in RESOURCES:
        spec_model = resource.model_fields["spec"].annotation
        spec_fields = getattr(spec_model, "model_fields", {})
        fields = ", ".join(field.alias or name for name, field in spec_fields.items())
        print(f"  {resource.KIND:<10} ({', '.join(resource.SHORT_NAMES)})  spec: {fields}")
    print(f"\nExample {args.examples}:")
    for loaded in resources:
        print(f"  {loaded.KIND}/{loaded.metadata.get('name')}: valid")
    print("\nParts: CRD schemas and the test cluster exist; the engine and gateway are being built (issue 4).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiplane", description="A Kubernetes-native control plane for AI automation.")
    parser.add_argument("--version", action="version", version=f"aiplane {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the embedded default on this machine")
    dev.add_argument("--examples", type=Path, default=EXAMPLE_DIR, help="manifests to load")
    dev.set_defaults(func=_cmd_dev)

    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions")
    crds.set_defaults(func=_cmd_crds)

    validate = sub.add_parser("validate", help="check manifests against the aiplane.io schemas")
    validate.add_argument("paths", type=Path, nargs="+", help="YAML files or folders")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
