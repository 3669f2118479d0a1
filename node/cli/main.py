"""The ``cxr-node`` command line: one sub-command per job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from domain import EXPLAIN_CHOICES
from node.audit.command import add_audit_command

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="weights file (.pt whole model or state dict, TorchScript, .onnx) or "
                        "torchxrayvision named weights such as densenet121-res224-pc")
    p.add_argument("--card", type=Path, help="model card (JSON/YAML); default: beside the weights")
    p.add_argument("--weights-cache", type=Path,
                   help="torchxrayvision weights cache (default ~/.torchxrayvision/models_data)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (8)")
    p.add_argument("--threads", type=int, help="PyTorch/ONNX threads (default: cores present)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-node", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="run the model on DICOM or PNG files and folders")
    p.add_argument("inputs", nargs="+", type=Path, metavar="FILE_OR_DIR")
    p.add_argument("--out", type=Path, required=True, help="output folder: OUT/<SOPInstanceUID>/")
    _add_model_args(p)
    p.add_argument("--explain", default="gradcam", choices=EXPLAIN_CHOICES,
                   help="explanation (default gradcam)")
    p.add_argument("--sanity", action="store_true",
                   help="also run the model-randomisation sanity check on each explanation")
    p.add_argument("--parametric-map", action="store_true",
                   help="also write the heat map as a float parametric map (heatmap_pm.dcm)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="run the node: DICOM C-STORE SCP, workers, sender")
    p.add_argument("--config", type=Path, help="TOML config file (flags > env > file)")
    p.add_argument("--ae-title")
    p.add_argument("--bind", help="listen address (default 0.0.0.0)")
    p.add_argument("--dicom-port", type=int)
    p.add_argument("--http-port", type=int)
    p.add_argument("--model")
    p.add_argument("--card", type=Path)
    p.add_argument("--weights-cache", type=Path)
    p.add_argument("--explain", choices=EXPLAIN_CHOICES)
    p.add_argument("--spool", type=Path)
    p.add_argument("--spool-quota-mb", type=float)
    p.add_argument("--destination", action="append", dest="destinations", metavar="AE@HOST:PORT",
                   help="send results there (repeatable)")
    p.add_argument("--peer", action="append", dest="peers", metavar="AE=HOST:PORT",
                   help="send results back to this calling AE (repeatable)")
    p.add_argument("--workers", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-queue-delay-ms", type=float)
    p.add_argument("--onnx-run-batch", type=int, help="images per ONNX Runtime run (1)")
    p.add_argument("--handoff-mb", type=float,
                   help="received objects kept in memory for the workers, MB")
    p.add_argument("--threads", type=int)
    p.add_argument("--onnx-fast-path", action=argparse.BooleanOptionalAction, default=None,
                   help="predict with ONNX Runtime when it matches PyTorch (default on)")
    p.add_argument("--allow-calling-ae", action="append", dest="allowed_calling_aes",
                   metavar="AE", help="only these calling AE titles may associate (repeatable)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate: DIMSE and HTTP over TLS")
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--tls-ca", type=Path, help="CA bundle for client certificates")
    p.add_argument("--tls-require-client-cert", action="store_true", default=None)
    p.add_argument("--max-associations", type=int)
    p.add_argument("--retry-max-attempts", type=int)
    p.add_argument("--retry-initial-s", type=float)
    scale = p.add_argument_group("scale-out (docs/scale-out.md)")
    scale.add_argument("--role", choices=("all", "receive", "work", "send"),
                       help="what this process does (default all; other than all needs "
                            "--broker)")
    scale.add_argument("--broker", metavar="AMQP_URL",
                       help="RabbitMQ broker, amqp[s]://HOST:PORT/VHOST (no credentials here:"
                            " CXR_NODE_BROKER or --broker-credentials-file)")
    scale.add_argument("--broker-credentials-file", type=Path, metavar="FILE",
                       help="one line user:password")
    scale.add_argument("--broker-ca", type=Path, help="CA bundle of the broker's certificate")
    scale.add_argument("--records", metavar="POSTGRESQL_URL",
                       help="shared job records (password from PGPASSWORD or ~/.pgpass)")
    scale.add_argument("--store", type=Path, help="shared object store folder (NFS)")
    scale.add_argument("--broker-timeout-s", type=float,
                       help="wait this long for a publish confirm before refusing (10)")
    scale.add_argument("--reconcile-grace-s", type=float,
                       help="the reconciler leaves younger objects alone (60)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("jobs", help="queue counts and failed items with their reasons")
    p.add_argument("--spool", type=Path, default=Path("spool"))
    p.add_argument("--config", type=Path, help="a scaled node's TOML config (its records)")
    p.add_argument("--records", metavar="POSTGRESQL_URL", help="a scaled node's job records")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("resend", help="re-queue failed deliveries (all, or --id N ...)")
    p.add_argument("--spool", type=Path, default=Path("spool"))
    p.add_argument("--config", type=Path, help="a scaled node's TOML config (broker, records)")
    p.add_argument("--records", metavar="POSTGRESQL_URL", help="a scaled node's job records")
    p.add_argument("--broker", metavar="AMQP_URL", help="a scaled node's broker")
    p.add_argument("--broker-credentials-file", type=Path, metavar="FILE")
    p.add_argument("--broker-ca", type=Path)
    p.add_argument("--id", type=int, action="append", dest="ids", help="delivery id")
    p.set_defaults(func=cmd_resend)
    add_audit_command(sub)  # cxr-node audit: the audit trail, its reading recorded
    p = sub.add_parser("demo-model", help="write an UNTRAINED 26-label DenseNet121 and its card "
                                          "(for plumbing checks only: its outputs mean nothing)")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_demo_model)

    p = sub.add_parser("bench", help="measure this machine: model only, HTTP /score and DIMSE "
                                     "end to end, explanations, memory, start time, against a "
                                     "naive scoring service")
    _add_model_args(p)
    p.add_argument("--images", nargs="+", type=Path, metavar="DIR_OR_FILE",
                   help="DICOM CR/DX or PNG radiographs (default: a mixed set as a PACS sends "
                        "them, made once from pydicom-data's NEMA CR and ../shared/data/cxr14 "
                        "in the common encodings)")
    p.add_argument("--image-cache", type=Path, metavar="DIR",
                   help="where the default image set is made once "
                        "(~/.cache/cxr-node/bench-images)")
    p.add_argument("--count", type=int,
                   help="images per end-to-end phase (default: the image set once, at least 32)")
    p.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (4)")
    p.add_argument("--scale-count", type=int, default=64,
                   help="images per run of the scale phase, 1 worker then 2 (64)")
    p.add_argument("--skip", action="append", metavar="PHASE[,PHASE]",
                   help="leave out: http, dimse, noexplain, gradcam, shap, scale, baseline, "
                        "overhead")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per model-only figure (3)")
    p.add_argument("--min-time", type=float, default=2.0,
                   help="seconds each model-only figure runs at least (2)")
    p.add_argument("--shap-nsamples", type=int, help="SHAP samples (default: the node's)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per wait (900)")
    p.add_argument("--workers", type=int, help="node under test: --workers")
    p.add_argument("--max-queue-delay-ms", type=float, help="node under test: same flag")
    p.add_argument("--onnx-fast-path", action=argparse.BooleanOptionalAction, default=None,
                   help="node under test: same flag")
    p.add_argument("--config", type=Path, help="node under test: TOML config file")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    p.set_defaults(func=cmd_bench)
    return parser


def _setup_logging(verbosity: int) -> None:
    """Log to stderr. pydicom's and highdicom's warnings quote header values (which can be
    patient data) and go nowhere; our own modules log UIDs and codes only."""
    import warnings

    level = logging.WARNING - 10 * min(verbosity, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("pydicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", module=rf"{name}(\..*)?")


def _load_model(args: argparse.Namespace):
    from inference import configure_threads, load_model

    configure_threads(args.threads)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be at least 1")
    return load_model(args.model, card=args.card, cache_dir=args.weights_cache)


def cmd_predict(args: argparse.Namespace) -> int:
    from inference import Predictor
    from node.cli.outputs import output_extras
    from node.cli.predict import ResultWriter, iter_inputs, run_batch

    missing = [p for p in args.inputs if not p.exists()]
    for p in missing:
        print(f"{p}: missing: no such file or folder", file=sys.stderr)
    paths = list(iter_inputs(p for p in args.inputs if p.exists()))
    model = _load_model(args)
    extras = output_extras(model, args.explain, sanity=args.sanity,
                           parametric_map=args.parametric_map)
    writer = ResultWriter(model, args.out, extras)
    report = run_batch(paths, Predictor(model, args.batch_size), writer,
                       progress=False if args.no_progress else None)
    failed = len(report.failed) + len(missing)
    print(f"{len(report.written)} image(s) written to {args.out}, {failed} failed",
          file=sys.stderr)
    return EXIT_INPUT_FAILED if failed or not paths else EXIT_OK


def settings_from_args(args: argparse.Namespace):
    from node.settings import Settings

    flags = {k: getattr(args, k, None) for k in Settings.model_fields}
    if args.peers:
        peers = {}
        for item in args.peers:
            ae, sep, address = item.partition("=")
            if not sep:
                raise ValueError(f"--peer {item!r} is not AE=HOST:PORT")
            peers[ae.strip()] = address.strip()
        flags["peers"] = peers
    flags = {k: v for k, v in flags.items() if v is not None}
    if "model" in flags:
        flags["model"] = str(flags["model"])
    return Settings.load(args.config, **flags)


def cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from node.service import Node

    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}"
                             for err in e.errors())
        raise ValueError(f"bad settings: {problems}") from e
    if settings.malloc_arenas is not None:  # before the node's threads exist
        from node.core.memory import limit_arenas

        limit_arenas(settings.malloc_arenas)
    if settings.broker is None:
        Node(settings).serve_forever()
        return EXIT_OK
    from node.core.errors import OutOfResourcesError

    try:
        from node.broker.roles import ScaledNode

        node = ScaledNode(settings)
    except OutOfResourcesError as e:  # the broker or the database is not there at start
        raise ValueError(str(e)) from e
    node.serve_forever()
    return EXIT_OK


def _open_records(spool: Path, records: str | None = None):
    from node.jobs.records import SqliteJobRecords

    if records is not None:
        from node.core.errors import OutOfResourcesError
        from node.jobs.postgres import PostgresJobRecords

        try:
            return PostgresJobRecords.connect(records)
        except OutOfResourcesError as e:
            raise ValueError(str(e)) from e
    from node.jobs.sqlite import Database

    db = spool / "queue.sqlite3"
    if not db.is_file():
        raise ValueError(f"no queue in spool {spool} (expected {db})")
    return SqliteJobRecords(Database(db))


def cmd_jobs(args: argparse.Namespace) -> int:
    import json

    records = args.records
    if records is None and args.config is not None:
        from node.settings import Settings

        records = Settings.load(args.config).records
    document = _open_records(args.spool, records).failed_document()
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    counts = document["counts"]
    for key in sorted(counts):
        print(f"{key:24} {counts[key]}")
    for j in document["failed_jobs"]:
        print(f"job {j['id']} {j['state']}: {j['reason']} ({j['sop_instance_uid']})")
    for d in document["failed_deliveries"]:
        print(f"delivery {d['id']} to {d['destination']} failed after {d['attempts']} "
              f"attempt(s): {d['reason']} ({d['sop_instance_uid']})")
    return EXIT_OK


def cmd_resend(args: argparse.Namespace) -> int:
    if args.broker or args.config:
        n = _resend_scaled(args)
    else:
        n = _open_records(args.spool, args.records).resend_failed(args.ids)
    print(f"{n} failed deliver{'y' if n == 1 else 'ies'} re-queued")
    return EXIT_OK


def _resend_scaled(args: argparse.Namespace) -> int:
    """Resend over the broker: failed deliveries are published again (confirmed)."""
    from node.broker import topology
    from node.broker.client import Publisher
    from node.broker.consumer import Consumer
    from node.broker.roles import broker_parameters
    from node.broker.sender import resend
    from node.core.errors import OutOfResourcesError
    from node.settings import Settings

    s = Settings.load(args.config, broker=args.broker, records=args.records,
                      broker_credentials_file=args.broker_credentials_file,
                      broker_ca=args.broker_ca)
    if s.broker is None:
        raise ValueError("resend over a broker needs --broker (or broker in --config)")
    delays = topology.retry_delays(s.retry_initial_s, s.retry_max_s, s.retry_max_attempts)
    params = broker_parameters(s, "cxr-node resend")
    publisher = Publisher(s.broker, params, delays, s.broker_timeout_s)
    records = _open_records(args.spool, s.records)
    try:
        publisher.start_connected()
        consumer = Consumer(s.broker, params, [], 0, delays)
        try:
            return resend(records, publisher, consumer, args.ids)
        finally:
            consumer.close()
    except OutOfResourcesError as e:
        raise ValueError(str(e)) from e
    finally:
        publisher.stop()
        records.disconnect()


def cmd_demo_model(args: argparse.Namespace) -> int:
    import json

    import torch
    import torchxrayvision as xrv

    from inference import PADCHEST_LABELS, ModelCard

    args.path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = xrv.models.DenseNet(num_classes=len(PADCHEST_LABELS), in_channels=1, weights=None)
    torch.save(model.eval(), args.path)
    card = ModelCard(
        name="untrained-demo", version="0", labels=PADCHEST_LABELS,
        thresholds=(0.5,) * len(PADCHEST_LABELS),
        intended_use="NONE: random weights for plumbing checks; outputs mean nothing.",
        description="torchxrayvision DenseNet121, 26 PadChest outputs, untrained.",
    )
    card_path = args.path.with_name(args.path.name + ".card.json")
    card_path.write_text(json.dumps(card.to_dict(), indent=2))
    print(f"wrote {args.path} and {card_path}", file=sys.stderr)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from node.bench.run import Options, run

    return run(Options.from_args(args))


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix (bad model, settings, files): one line, exit 2."""
    errors: list[type[BaseException]] = [ValueError, OSError]
    for module, name in (("inference.errors", "InferenceError"),
                         ("dicom_io.errors", "DicomIOError"),
                         ("node.jobs.sqlite", "SchemaError")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            errors.append(cls)
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    import os

    # GNU OpenMP threads spin between steps by default; on a busy machine that makes PyTorch
    # many times slower (measured by `cxr-node bench`). Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # numpy's OpenBLAS would split each small product of the resize over every core (and
    # spin between them) while the node already runs images in parallel. Before numpy loads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except Exception as e:
        if isinstance(e, _user_errors()):
            print(f"cxr-node {args.command}: {e}", file=sys.stderr)
            return EXIT_USAGE
        logger.debug("unexpected error", exc_info=True)  # a bug: the traceback in the debug log
        print(f"cxr-node {args.command}: internal error: {type(e).__name__}: {e}",
              file=sys.stderr)
        return EXIT_USAGE + 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
