"""The ``headroom`` command: serve, export, build demo heads, onboard, offboard, list, classify.

Every subcommand has ``--help``; failures print one clear line to stderr and exit non-zero.
``classify`` doubles as a smoke test: it exits 1 when any text gets no label.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from client import bulk_files
from headroom import config

log = logging.getLogger("headroom")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    level = logging.DEBUG if verbose else logging.INFO
    for name in ("headroom", "export", "server", "client"):
        logging.getLogger(name).setLevel(level)


def _client(args: argparse.Namespace):
    from client.headroom_client import HeadroomClient
    from headroom.admin_key import AdminKeyError, load_admin_key

    repository = Path(args.repository)
    admin_key = None  # the client's default: HEADROOM_ADMIN_KEY, else the key file
    if getattr(args, "admin_key_file", None):
        key_file = Path(args.admin_key_file)
        admin_key = load_admin_key(key_file, environ={})  # an explicit file wins over the environment
        if admin_key is None:
            raise AdminKeyError(f"admin key file {key_file} does not exist")
    return HeadroomClient(
        args.url, repository=repository, state_dir=config.state_dir_for(repository), admin_key=admin_key
    )


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def serve_admin_key(state_dir: Path) -> str:
    """The key ``serve`` protects the control plane with (created on first run), and where it is."""
    from headroom.admin_key import ensure_admin_key, fingerprint

    admin = ensure_admin_key(config.admin_key_file_for(state_dir))
    if admin.path is None:
        where = f"from {config.ADMIN_KEY_ENV} ({fingerprint(admin.key)})"
    else:
        where = f"{'created' if admin.created else 'in'} {_display_path(admin.path)}"
    print(
        f"admin key: {where} (send it as header {config.ADMIN_KEY_HEADER}, over gRPC as "
        f"{config.ADMIN_KEY_GRPC_HEADER}; the headroom CLI reads it from there)"
    )
    return admin.key


# --- subcommands -----------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from export.demo import DEMO_TENANTS
    from export.encoder import export_all, install_encoder, read_encoder_info, sha256_of, variant_path
    from export.head_store import heads_trained_for

    repository = Path(args.repository)
    with _status(f"exporting the encoder ({', '.join(config.ENCODER_VARIANTS)}) to {config.BUILD_DIR}"):
        export_all(force=args.force)
    try:
        installed = read_encoder_info(repository)
    except FileNotFoundError:
        installed = None
    wanted = f"sha256:{sha256_of(variant_path(args.variant))}"
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
    info = install_encoder(args.variant, repository)
    print(f"encoder: {info['variant']} variant installed, fingerprint {info['fingerprint']}")
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    from export.tenants import build_demo_heads

    repository = Path(args.repository)
    for name, metrics in build_demo_heads(repository, config.state_dir_for(repository)):
        print(
            f"head {name:<12} accuracy {metrics['holdout_accuracy']:.3f}  macro-F1 {metrics['holdout_macro_f1']:.3f}"
            f"  ({metrics['classes']} classes, {metrics['holdout_examples']} held out)"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from export.head_store import clean_staging, upgrade_registrations
    from server.triton import TritonServer

    address = config.ServerAddress(args.host, args.http_port, args.grpc_port, args.metrics_port)
    state_dir = config.state_dir_for(Path(args.repository))
    cleaned = clean_staging(state_dir)
    if cleaned:
        log.info("removed %d unfinished onboarding(s) from %s", cleaned, state_dir / "staging")
    for name in upgrade_registrations(Path(args.repository)):
        log.info("head %s: registered with the shared executor (was its own ONNX Runtime model)", name)
    server = TritonServer(address, Path(args.repository), admin_key=serve_admin_key(state_dir))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    try:
        with _status("waiting for Triton to load the models"):
            failed = server.wait_ready(stop=stop)
        heads = [m for m in server.models if m.startswith(config.HEAD_MODEL_PREFIX) and m not in failed]
        print(
            f"headroom is serving {len(heads)} heads: HTTP {address.http_url}  gRPC {address.grpc_url}  "
            f"metrics http://{address.host}:{address.metrics_port}/metrics"
        )
        for name in failed:
            print(f"warning: {name} failed to load; see the server log above", file=sys.stderr)
        print("Ctrl-C to stop.")
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                print("error: tritonserver exited", file=sys.stderr)
                return 1
    finally:
        print("stopping tritonserver (in-flight requests finish first)...")
        server.stop()
    return 0


def cmd_onboard(args: argparse.Namespace) -> int:
    if args.onnx is not None:
        if args.data_file is not None:
            raise ValueError("onboard NAME --onnx head.onnx --labels labels.txt takes no training file")
        if args.labels is None:
            raise ValueError("--onnx needs --labels: the head's labels, one per line in output order")
        with _client(args) as client, _status(f"onboarding {args.name} from {args.onnx}"):
            result = client.onboard_model(args.name, args.onnx, args.labels, args.encoder_fingerprint)
        print(
            f"onboarded {result.name} v{result.version} from {args.onnx} "
            f"({result.seconds_total:.2f} s, first answer {result.seconds_to_first_answer:.2f} s after loading)"
        )
        return 0
    if args.data_file is None:
        raise ValueError("onboard needs a training file (NAME data.jsonl) or a head (NAME --onnx FILE --labels FILE)")
    if args.labels is not None or args.encoder_fingerprint is not None:
        raise ValueError("--labels and --encoder-fingerprint go with --onnx; a training file brings its own")
    with _client(args) as client:
        result = client.onboard(args.name, args.data_file, progress=True)
    m = result.metrics
    split = ", ".join(f"{step.replace('_', ' ')} {seconds:.3f}" for step, seconds in result.timings.items())
    print(
        f"onboarded {result.name} v{result.version}: accuracy {m['holdout_accuracy']:.3f}, "
        f"macro-F1 {m['holdout_macro_f1']:.3f} on {m['holdout_examples']} held-out examples "
        f"in {result.seconds_total:.2f} s ({split} s)"
    )
    return 0


def cmd_offboard(args: argparse.Namespace) -> int:
    with _client(args) as client:
        archived = client.offboard(args.name)
    print(f"offboarded {args.name}" + (f"; files archived in {archived}" if archived else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        heads = client.list_heads()
    if not heads:
        print("no heads")
    for head in heads:
        print(f"{head.name:<24} {head.state:<12} v{head.version or '-'}  {head.reason}".rstrip())
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    if args.input is None:
        if not args.texts:
            raise ValueError("classify needs texts (classify --head NAME TEXT...) or --input FILE (- for stdin)")
        if args.head is None:
            raise ValueError("classify TEXT... needs --head")
        with _client(args) as client:
            results = client.classify(args.texts, args.head, return_errors=True)
        if args.output is None and args.output_format is None:
            return _print_results(results)
        records = [bulk_files.Record(text) for text in args.texts]
        return _write_results(args, records, [args.head] * len(records), results)
    if args.texts:
        raise ValueError("give texts as arguments or --input, not both")
    records = bulk_files.read_records(args.input, bulk_files.input_format(args.input, args.input_format), sys.stdin)
    heads = [record.head or args.head for record in records]
    missing = next((index for index, head in enumerate(heads) if head is None), None)
    if missing is not None:
        raise ValueError(f"{args.input}: record {missing + 1} names no head: give --head or a 'head' field")
    with _client(args) as client:
        # Blocks keep memory bounded on long inputs; inside one, texts travel in length-sorted chunks.
        results: list = []
        with _progress(len(records), "classify") as bar:
            for start in range(0, len(records), config.CLI_BLOCK_TEXTS):
                block = records[start : start + config.CLI_BLOCK_TEXTS]
                texts = [record.text for record in block]
                results += client.classify(texts, heads[start : start + len(block)], return_errors=True)
                bar.update(len(block))
    return _write_results(args, records, heads, results)


def _print_results(results: list) -> int:
    failed = 0
    for result in results:
        if isinstance(result, Exception):
            failed += 1
            print(f"error: {result}", file=sys.stderr)
        else:
            print(f"{result.label}\t{result.score:.3f}\t{result.text}")
    return 1 if failed else 0


def _write_results(args: argparse.Namespace, records: list, heads: list[str], results: list) -> int:
    """Write every row (``--output``, default standard output); 1 when any text got no label."""
    fmt = bulk_files.output_format(args.output, args.output_format)
    handle = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        bulk_files.ResultWriter(handle, fmt, bulk_files.extra_fields(records)).write(records, heads, results)
    finally:
        if handle is not sys.stdout:
            handle.close()
    failed = sum(isinstance(result, Exception) for result in results)
    if failed:
        first = next(result for result in results if isinstance(result, Exception))
        print(f"error: {failed} of {len(results)} texts got no label; first: {first}", file=sys.stderr)
    elif args.output:
        print(f"classified {len(results)} texts into {args.output}", file=sys.stderr)
    return 1 if failed else 0


def _progress(total: int, description: str):
    """A progress bar on a terminal (standard error), nothing otherwise."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="text", disable=None, file=sys.stderr)


# --- plumbing --------------------------------------------------------------------------------
class _status:
    """A spinner with a message on a terminal; a plain log line otherwise."""

    def __init__(self, message: str) -> None:
        self.message = message
        self._context = None

    def __enter__(self) -> None:
        if sys.stderr.isatty():
            from rich.console import Console

            self._context = Console(stderr=True).status(self.message)
            self._context.__enter__()
        else:
            log.info("%s ...", self.message)

    def __exit__(self, *exc_info: object) -> None:
        if self._context is not None:
            self._context.__exit__(*exc_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headroom", description="Multi-tenant text classification on Triton.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--repository",
        default=str(config.MODEL_REPOSITORY),
        help="model repository folder (env HEADROOM_MODEL_REPOSITORY; default %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_url(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--url",
            default=config.DEFAULT_URL,
            help="server, http://host:port or grpc://host:port (env HEADROOM_URL; default %(default)s)",
        )
        return p

    def with_admin_key(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--admin-key-file",
            help=f"file holding the admin key for load/unload/index (default: env {config.ADMIN_KEY_ENV}, "
            f"else env {config.ADMIN_KEY_FILE_ENV}, else <state dir>/admin.key, written by `headroom serve`)",
        )
        return with_url(p)

    p = sub.add_parser("serve", help="run Triton with the model repository (Ctrl-C to stop)")
    p.add_argument("--host", default=config.HOST, help="host name printed in URLs (default %(default)s)")
    p.add_argument(
        "--http-port", type=int, default=config.HTTP_PORT, help="env HEADROOM_HTTP_PORT (default %(default)s)"
    )
    p.add_argument(
        "--grpc-port", type=int, default=config.GRPC_PORT, help="env HEADROOM_GRPC_PORT (default %(default)s)"
    )
    p.add_argument(
        "--metrics-port", type=int, default=config.METRICS_PORT, help="env HEADROOM_METRICS_PORT (default %(default)s)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="export the encoder to ONNX (every variant) and install one")
    p.add_argument(
        "--variant",
        choices=config.ENCODER_VARIANTS,
        default=config.ENCODER_VARIANT,
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

    p = with_admin_key(
        sub.add_parser(
            "onboard",
            help="train a head from a labelled file (or take a ready-made ONNX head), check it, load it",
            description="onboard NAME data.jsonl   |   onboard NAME --onnx head.onnx --labels labels.txt",
        )
    )
    p.add_argument("name", help="head name: 1-48 of a-z 0-9 _ -, starting with a letter or digit")
    p.add_argument(
        "data_file", nargs="?", help='JSONL lines {"text": ..., "label": ...} or CSV with text,label columns'
    )
    p.add_argument("--onnx", help="a ready-made head: ONNX sentence_embedding FP32 [B, 384] -> probabilities [B, C]")
    p.add_argument("--labels", help="with --onnx: the head's labels, one per line in output order")
    p.add_argument(
        "--encoder-fingerprint",
        help="with --onnx: sha256:... of the encoder the head was trained for (default: the ONNX metadata "
        "'encoder_fingerprint'); must be the served encoder's",
    )
    p.set_defaults(func=cmd_onboard)

    p = with_admin_key(sub.add_parser("offboard", help="unload a head and archive its files"))
    p.add_argument("name")
    p.set_defaults(func=cmd_offboard)

    p = with_admin_key(sub.add_parser("list", help="list heads and their state"))
    p.set_defaults(func=cmd_list)

    p = with_url(
        sub.add_parser(
            "classify",
            help="classify texts given as arguments, or many from a file or standard input",
            description="classify --head NAME TEXT...   |   classify [--head NAME] --input FILE|- [--output FILE]",
        )
    )
    p.add_argument("--head", help="head name, e.g. smart_home (with --input: for records that name none)")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument(
        "--input",
        help="read texts from FILE (- for standard input): lines, JSONL ('text', optional 'head') or CSV "
        "(columns 'text', optional 'head'); other fields are copied to the output",
    )
    p.add_argument("--input-format", choices=bulk_files.INPUT_FORMATS, help="default: by extension; lines for stdin")
    p.add_argument("--output", help="write results to FILE (default: standard output)")
    p.add_argument(
        "--output-format",
        choices=bulk_files.OUTPUT_FORMATS,
        help="default: by extension of --output, else jsonl (label<TAB>score<TAB>text for texts given as arguments)",
    )
    p.set_defaults(func=cmd_classify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line for the user; --verbose shows the traceback
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
