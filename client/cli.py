"""The ``headroom`` command: classify, list, onboard, offboard; serve, export and heads.

Client subcommands live here; ``serve`` comes from ``headroom.server.cli`` and ``export``/``heads``
from ``headroom.export.cli``. Settings come from the environment when the command starts
(``headroom.config.Settings``), flags override them. Every subcommand has ``--help``; failures
print one clear line to stderr and exit non-zero. ``classify`` doubles as a smoke test: it exits
1 when any text gets no label.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

from headroom import config
from headroom.client import bulk_files
from headroom.console import status

log = logging.getLogger("headroom")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    level = logging.DEBUG if verbose else logging.INFO
    logging.getLogger("headroom").setLevel(level)


def _client(args: argparse.Namespace):
    from headroom.admin_key import AdminKeyError, load_admin_key
    from headroom.client.inference import HeadroomClient

    settings: config.Settings = args.settings
    admin_key = None  # the client's default: HEADROOM_ADMIN_KEY, else the key file
    key_file = config.admin_key_file_for(config.state_dir_for(config.repository_of(args.repository)))
    if getattr(args, "admin_key_file", None):
        key_file = Path(args.admin_key_file)
        admin_key = load_admin_key(key_file, environ={})  # an explicit file wins over the environment
        if admin_key is None:
            raise AdminKeyError(f"admin key file {key_file} does not exist")
    return HeadroomClient(
        args.url,
        concurrency=settings.client_concurrency,
        timeout_s=settings.client_timeout_s,
        admin_key=admin_key,
        admin_key_file=key_file,
    )


@contextmanager
def _onboarding(args: argparse.Namespace):
    """An ``Onboarding`` into ``--repository`` through the server at ``--url`` (loading on every
    one of ``--replicas`` when given)."""
    from headroom.client.onboarding import Onboarding
    from headroom.cluster.replicas import replica_urls

    settings: config.Settings = args.settings
    repository = config.repository_of(args.repository)
    replica_clients = []
    with _client(args) as client:
        try:
            for url in replica_urls(args.replicas):
                args_of_replica = argparse.Namespace(**{**vars(args), "url": url})
                replica_clients.append(_client(args_of_replica))
            yield Onboarding(
                client,
                repository,
                config.state_dir_for(repository),
                lock_timeout_s=settings.head_lock_timeout_s,
                load_timeout_s=settings.load_timeout_s,
                regularisation_c=settings.head_regularisation_c,
                replicas=replica_clients or None,
            )
        finally:
            for replica in replica_clients:
                replica.close()


def _replica_note(result) -> str:
    """`` on 3 replicas (slowest load 0.21 s)``, with the ones that missed it; "" for one server."""
    if len(result.replicas) + len(result.missed) <= 1:
        return ""
    note = f" on {len(result.replicas)} replicas (slowest load {max(result.replicas.values()):.2f} s)"
    if result.missed:
        note += f"; missed by {', '.join(sorted(result.missed))} (they converge by reconciling)"
    return note


def cmd_onboard(args: argparse.Namespace) -> int:
    if args.onnx is not None:
        if args.data_file is not None:
            raise ValueError("onboard NAME --onnx head.onnx --labels labels.txt takes no training file")
        if args.labels is None:
            raise ValueError("--onnx needs --labels: the head's labels, one per line in output order")
        with _onboarding(args) as onboarding, status(f"onboarding {args.name} from {args.onnx}"):
            result = onboarding.onboard_model(args.name, args.onnx, args.labels, args.encoder_fingerprint)
        print(
            f"onboarded {result.name} v{result.version} from {args.onnx} "
            f"({result.seconds_total:.2f} s, first answer {result.seconds_to_first_answer:.2f} s after loading)"
            + _replica_note(result)
        )
        return 0
    if args.data_file is None:
        raise ValueError("onboard needs a training file (NAME data.jsonl) or a head (NAME --onnx FILE --labels FILE)")
    if args.labels is not None or args.encoder_fingerprint is not None:
        raise ValueError("--labels and --encoder-fingerprint go with --onnx; a training file brings its own")
    with _onboarding(args) as onboarding:
        result = onboarding.onboard(args.name, args.data_file, progress=True)
    m = result.metrics
    split = ", ".join(f"{step.replace('_', ' ')} {seconds:.3f}" for step, seconds in result.timings.items())
    slots = (
        f", {m['slots']} slots with entity F1 {m['holdout_entity_f1']:.3f}" if "holdout_entity_f1" in m else ""
    )
    print(
        f"onboarded {result.name} v{result.version}: accuracy {m['holdout_accuracy']:.3f}, "
        f"macro-F1 {m['holdout_macro_f1']:.3f} on {m['holdout_examples']} held-out examples{slots} "
        f"in {result.seconds_total:.2f} s ({split} s)" + _replica_note(result)
    )
    return 0


def cmd_offboard(args: argparse.Namespace) -> int:
    with _onboarding(args) as onboarding:
        archived = onboarding.offboard(args.name)
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
            results = client.classify(
                args.texts, args.head, return_errors=True, batch_size=args.settings.client_batch_size
            )
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
            block_texts = args.settings.cli_block_texts
            for start in range(0, len(records), block_texts):
                block = records[start : start + block_texts]
                texts = [record.text for record in block]
                results += client.classify(
                    texts,
                    heads[start : start + len(block)],
                    return_errors=True,
                    batch_size=args.settings.client_batch_size,
                )
                bar.update(len(block))
    return _write_results(args, records, heads, results)


def _print_results(results: list) -> int:
    failed = 0
    for result in results:
        if isinstance(result, Exception):
            failed += 1
            print(f"error: {result}", file=sys.stderr)
        else:
            line = f"{result.label}\t{result.score:.3f}\t{result.text}"
            if result.entities is not None:  # a head with slots: label=covered text, in text order
                line += "\t" + " ".join(f"{e.label}={e.text!r}" for e in result.entities)
            print(line)
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


def build_parser(settings: config.Settings | None = None) -> argparse.ArgumentParser:
    from headroom.cluster import cli as cluster_cli
    from headroom.export import cli as export_cli
    from headroom.server import cli as server_cli

    settings = settings or config.Settings.from_env()
    parser = argparse.ArgumentParser(prog="headroom", description="Multi-tenant text classification on Triton.")
    parser.set_defaults(settings=settings)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--repository",
        default=str(settings.model_repository),
        help="model repository: a folder or s3://host:port/bucket/path (env HEADROOM_MODEL_REPOSITORY; "
        "default %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_url(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--url",
            default=settings.url,
            help="server, http://host:port or grpc://host:port (env HEADROOM_URL; default %(default)s)",
        )
        return p

    def with_admin_key(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--admin-key-file",
            help=f"file holding the admin key for load/unload/index (default: env {config.ADMIN_KEY_ENV}, "
            f"else env {config.ADMIN_KEY_FILE_ENV}, else <state dir>/admin.key, written by `headroom serve`)",
        )
        p.add_argument(
            "--replicas",
            default=settings.replicas,
            help="load and unload on every replica: http://a:8000,http://b:8000 or dns:<headless service>:<port> "
            "(env HEADROOM_REPLICAS; default: the server at --url only)",
        )
        return with_url(p)

    server_cli.add_parser(sub, settings)
    export_cli.add_parsers(sub, settings)
    cluster_cli.add_parsers(sub, settings)

    p = with_admin_key(
        sub.add_parser(
            "onboard",
            help="train a head from a labelled file (or take a ready-made ONNX head), check it, load it",
            description="onboard NAME data.jsonl   |   onboard NAME --onnx head.onnx --labels labels.txt",
        )
    )
    p.add_argument("name", help="head name: 1-48 of a-z 0-9 _ -, starting with a letter or digit")
    p.add_argument(
        "data_file",
        nargs="?",
        help='JSONL lines {"text": ..., "label": ...} or CSV with text,label columns; slots: an "entities" '
        'list [{"start", "end", "label"}] per line, or the markup "turn on the [kitchen](area) lights"',
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
