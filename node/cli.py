"""The ``cxr-node`` command line: one sub-command per job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from inference import InferenceError

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
    p.add_argument("--explain", default="gradcam",
                   help="explanation: gradcam, gradcampp, shap, none (default gradcam)")
    p.add_argument("--sanity", action="store_true",
                   help="also run the model-randomisation sanity check on each explanation")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo-model", help="write an UNTRAINED 26-label DenseNet121 and its card "
                                          "(for plumbing checks only: its outputs mean nothing)")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_demo_model)
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load_model(args: argparse.Namespace):
    from inference import configure_threads, load_model

    configure_threads(args.threads)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be at least 1")
    return load_model(args.model, card=args.card, cache_dir=args.weights_cache)


def cmd_predict(args: argparse.Namespace) -> int:
    from inference import Predictor
    from node.batch import ResultWriter, iter_inputs, run_batch
    from node.outputs import output_extras

    missing = [p for p in args.inputs if not p.exists()]
    for p in missing:
        print(f"{p}: missing: no such file or folder", file=sys.stderr)
    paths = list(iter_inputs(p for p in args.inputs if p.exists()))
    model = _load_model(args)
    extras = output_extras(model, args.explain, sanity=args.sanity)
    writer = ResultWriter(model, args.out, extras)
    report = run_batch(paths, Predictor(model, args.batch_size), writer,
                       progress=False if args.no_progress else None)
    failed = len(report.failed) + len(missing)
    print(f"{len(report.written)} image(s) written to {args.out}, {failed} failed",
          file=sys.stderr)
    return EXIT_INPUT_FAILED if failed or not paths else EXIT_OK


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except (InferenceError, ValueError, OSError) as e:
        print(f"cxr-node {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
