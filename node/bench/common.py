"""What ``cxr-node bench`` is asked to do (:class:`Options`) and what it found
(:class:`Results`), with the helpers every phase uses; shared by the phases and the report."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SKIPPABLE = ("http", "dimse", "noexplain", "gradcam", "shap", "scale", "baseline",
             "overhead")
#: The scale phase's figures in the JSON ``raw`` object (:mod:`node.bench.scale`).
SCALE_RAW_KEYS = ("scale_1_worker_ips", "scale_1_worker_wall_s", "scale_2_workers_ips",
                  "scale_2_workers_wall_s", "scale_min_worker_share")
#: The baseline phase's figures (:mod:`node.bench.baseline`): the naive script, then
#: deploy/score.py, under azmlinfsrv.
BASELINE_RAW_KEYS = tuple(f"{name}_{key}" for name in ("baseline", "deploy") for key in (
    "ready_s", "single_ips", "single_p50_s", "single_p95_s", "concurrent_ips",
    "concurrent_p50_s", "concurrent_p95_s"))
#: End-to-end requests per phase when ``--count`` is not given: the image set once, at least.
DEFAULT_COUNT = 32


@dataclass
class Options:
    """What ``cxr-node bench`` was asked to do."""

    model: str
    card: Path | None = None
    weights_cache: Path | None = None
    images: list[Path] = field(default_factory=list)
    #: where the default image set is made once (None: ``~/.cache/cxr-node/bench-images``)
    image_cache: Path | None = None
    #: images per end-to-end phase; 0: the image set's size, at least DEFAULT_COUNT
    #: (:meth:`for_images`)
    count: int = 0
    #: images per run of the scale phase (1 worker, then 2)
    scale_count: int = 64
    clients: int = 4
    batch_size: int = 8
    threads: int | None = None
    skip: frozenset[str] = frozenset()
    repeat: int = 3
    min_time_s: float = 2.0
    shap_nsamples: int | None = None
    timeout_s: float = 900.0
    node_args: list[str] = field(default_factory=list)
    json_only: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        skip = frozenset(s.strip().lower() for item in (args.skip or [])
                         for s in item.split(",") if s.strip())
        unknown = sorted(skip - set(SKIPPABLE))
        if unknown:
            raise ValueError(f"--skip {','.join(unknown)}: use any of {','.join(SKIPPABLE)}")
        for name in ("count", "clients", "batch_size", "repeat", "scale_count"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= args.min_time <= 600:
            raise ValueError(f"--min-time {args.min_time}: use 0 to 600 seconds")
        node_args: list[str] = []
        for flag in ("workers", "max_queue_delay_ms", "config"):
            value = getattr(args, flag, None)
            if value is not None:
                node_args += [f"--{flag.replace('_', '-')}", str(value)]
        if getattr(args, "onnx_fast_path", None) is not None:
            node_args.append("--onnx-fast-path" if args.onnx_fast_path else "--no-onnx-fast-path")
        return cls(model=str(args.model), card=args.card, weights_cache=args.weights_cache,
                   images=list(args.images or []), image_cache=args.image_cache,
                   count=args.count or 0,
                   scale_count=args.scale_count, clients=args.clients,
                   batch_size=args.batch_size, threads=args.threads, skip=skip,
                   repeat=args.repeat, min_time_s=args.min_time,
                   shap_nsamples=args.shap_nsamples,
                   timeout_s=args.timeout, node_args=node_args, json_only=args.json_only)

    def for_images(self, distinct: int) -> Options:
        """These options with ``count`` settled: as given, else every image of the set once
        (at least :data:`DEFAULT_COUNT`), so that every encoding is sent."""
        return self if self.count else replace(self, count=max(DEFAULT_COUNT, distinct))


@dataclass
class Results:
    """What the phases found: figures (``raw``, units in the key), facts, problems."""

    raw: dict[str, float | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def put(self, key: str, value: float | None) -> None:
        self.raw[key] = None if value is None or not math.isfinite(value) else float(value)


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def phase(res: Results, name: str, fn: Callable[[], object]) -> bool:
    """Run one phase; a failure is recorded (and logged), never raised."""
    try:
        fn()
        return True
    except Exception as e:
        logger.debug("phase %s failed", name, exc_info=True)
        first, _, rest = str(e).partition("\n")
        res.errors.append(f"{name}: {type(e).__name__}: {first}")
        if rest:
            print(f"bench: {name} failed: {e}", file=sys.stderr)
        return False
