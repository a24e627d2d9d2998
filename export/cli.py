"""``headroom export`` and ``headroom heads``: build the encoder and the demo tenants' heads.

Both run before the server starts (``make serve`` runs them) and write into the model
repository directly; onboarding a tenant into a running server is ``headroom onboard``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headroom import config
from headroom.console import status


def cmd_export(args: argparse.Namespace) -> int:
    from headroom.export.demo import DEMO_TENANTS
    from headroom.export.encoder import export_all, install_encoder, read_encoder_info, sha256_of, variant_path
    from headroom.repository.head_store import heads_trained_for

    settings: config.Settings = args.settings
    repository = Path(args.repository)
    build_dir = settings.build_dir
    with status(f"exporting the encoder ({', '.join(config.ENCODER_VARIANTS)}) to {build_dir}"):
        export_all(build_dir, force=args.force)
    try:
        installed = read_encoder_info(repository)
    except FileNotFoundError:
        installed = None
    wanted = f"sha256:{sha256_of(variant_path(args.variant, build_dir))}"
    if installed is not None and installed["fingerprint"] != wanted and not args.switch_encoder:
        # Demo heads are retrained by `headroom heads`; a tenant's head would be refused until onboarded again.
        stranded = [h for h in heads_trained_for(installed["fingerprint"], repository) if h not in DEMO_TENANTS]
        if stranded:
            shown = ", ".join(stranded[:5]) + (f" and {len(stranded) - 5} more" if len(stranded) > 5 else "")
            print(
                f"encoder: keeping the installed {installed['variant']} variant, not {args.variant}: "
                f"{len(stranded)} onboarded head(s) were trained for it ({shown}) and would be refused. "
                f"To switch, run `headroom export --variant {args.variant} --switch-encoder` and onboard them again; "
                f"to keep it quietly, set HEADROOM_ENCODER_VARIANT={installed['variant']}.",
                file=sys.stderr,
            )
            return 0
    info = install_encoder(args.variant, repository, build_dir)
    print(f"encoder: {info['variant']} variant installed, fingerprint {info['fingerprint']}")
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    from headroom.export.tenants import build_demo_heads

    settings: config.Settings = args.settings
    repository = Path(args.repository)
    built = build_demo_heads(
        repository, config.state_dir_for(repository), settings.build_dir, settings.head_regularisation_c
    )
    for name, metrics in built:
        print(
            f"head {name:<12} accuracy {metrics['holdout_accuracy']:.3f}  macro-F1 {metrics['holdout_macro_f1']:.3f}"
            f"  ({metrics['classes']} classes, {metrics['holdout_examples']} held out)"
        )
    return 0


def add_parsers(sub: argparse._SubParsersAction, settings: config.Settings) -> None:
    """Add ``export`` and ``heads`` to the ``headroom`` command's subcommands."""
    p = sub.add_parser("export", help="export the encoder to ONNX (every variant) and install one")
    p.add_argument(
        "--variant",
        choices=config.ENCODER_VARIANTS,
        default=settings.encoder_variant,
        help="variant to serve (env HEADROOM_ENCODER_VARIANT; default %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="re-export even if the files exist")
    p.add_argument(
        "--switch-encoder",
        action="store_true",
        help="install the variant even when onboarded heads were trained for the installed encoder "
        "(they are refused until onboarded again); without it, such a repository keeps its encoder",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("heads", help="build the demo tenants' heads that are missing or stale")
    p.set_defaults(func=cmd_heads)
