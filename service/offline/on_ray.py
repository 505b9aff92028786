"""``pspnet-serve segment --ray``: the same work as a Ray Data pipeline, on one machine or a cluster.

    from_items(jobs) -> map(read) -> map(decode) -> map_batches(SegmentActor, fixed actor pool)
                     -> one manifest line per input, streamed back to the driver

- read: each input's bytes, in Ray tasks: a local path (at the same place on every node) or a
  URI through pyarrow's filesystems, which are what Ray Data's own readers use (``s3://``,
  ``gs://``, ... with the credentials the nodes have). Reading in a ``map`` rather than with
  ``ray.data.read_binary_files`` keeps each input's job (its output path) with its bytes and
  turns a file that cannot be read into that input's error instead of the whole dataset's.
- decode: :func:`service.offline.work.decode_input` (the service's decoder, the pixel limit),
  in Ray tasks too, so decoding scales with the CPUs of the cluster, not the model's workers.
- segment: ``num_workers`` actors, each reserving ``cpus_per_worker`` CPUs and
  ``gpus_per_worker`` GPUs and holding one :class:`service.offline.work.Segmenter` (one
  engine, its own tile pool). Each call gets up to ``max_batch`` decoded images and runs the
  plain command's driver on them (their tiles share batches; the pool is flushed at the end of
  the call), which writes their results under ``OUT``: ``OUT`` must be a folder every node sees
  at the same path (a shared volume); the driver never holds images.
- the driver (:func:`segment_on_ray`) only turns the lines into records: the caller writes the
  manifest and shows progress.

Ray is imported when the pipeline runs, never at import time: the base install has no Ray
(install the ``ray`` extra). A Ray already initialised in this process is used as it is; else
``address`` (``--ray-address``), then ``RAY_ADDRESS``, name a cluster to join, and without
either a local cluster is started for the run (and stopped after it), counting at least one
CPU beyond the workers' so that reading and decoding can always be scheduled.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.codec.decode import DecodeLimits
from service.engine.options import usable_cores
from service.offline.inputs import read_input
from service.offline.manifest import Record
from service.offline.work import BulkConfig, Decoded, Job, Segmenter, decode_input

_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)  # a row's "rgb" when decoding failed (columns keep one type)


class RayUnavailable(RuntimeError):
    """``--ray`` without Ray installed: a usage error."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: RAY_ADDRESS, else a new local cluster
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise RayUnavailable(f"--ray needs Ray: pip install 'pspnet-serving[ray]' ({e})") from None
    return ray


def connect(ray: Any, opts: RayOptions) -> bool:
    """Join or start a cluster unless this process is already connected; True if this call did it."""
    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS") or "local"
    extra: dict[str, Any] = {}
    if address == "local":
        need = math.ceil(opts.num_workers * opts.cpus_per_worker) + 1
        extra = {"num_cpus": max(usable_cores(), need), "include_dashboard": False}
    ray.init(address=address, logging_level=logging.WARNING, **extra)
    return True


def actor_threads(threads: int, cpus_per_worker: float) -> int:
    """ONNX Runtime threads of one actor: as asked, else the whole CPUs it reserved (at least 1).

    Not ORT's default (every core of the node): several actors on one node would oversubscribe it.
    """
    return threads if threads > 0 else max(1, math.floor(cpus_per_worker))


def segment_on_ray(config: BulkConfig, jobs: Sequence[Job], opts: RayOptions) -> Iterator[Record]:
    """Every job through the pipeline; its manifest line as each finishes, in no particular order."""
    config = replace(config, threads=actor_threads(config.threads, opts.cpus_per_worker))
    ray = import_ray()
    started = connect(ray, opts)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # the caller shows progress
        ds = ray.data.from_items([{"source": j.source, "location": j.location, "output": j.output}
                                  for j in jobs])
        ds = ds.map(read_row).map(decode_row, fn_kwargs={"limits": config.limits})
        ds = ds.map_batches(SegmentActor, fn_constructor_kwargs={"config": config},
                            batch_size=config.max_batch, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=opts.num_workers),
                            num_cpus=opts.cpus_per_worker, num_gpus=opts.gpus_per_worker or None)
        for row in ds.iter_rows():
            yield Record.from_line(str(row["line"]))
    finally:
        if started:
            ray.shutdown()


# --- the stages (module level: Ray pickles them by reference) ------------------------------------

def read_row(row: dict[str, Any]) -> dict[str, Any]:
    """Add the input's bytes, or why they could not be read."""
    try:
        data, error = read_input(row["location"]), ""
    except (OSError, ValueError) as e:
        data, error = b"", str(e) or type(e).__name__
    return {**row, "data": data, "error": error}


def decode_row(row: dict[str, Any], limits: DecodeLimits) -> dict[str, Any]:
    """Replace the bytes with the decoded frame (or an empty one and the reason)."""
    job = Job(str(row["source"]), str(row["location"]), str(row["output"]))
    if row["error"]:
        d = Decoded(job, None, None, None, 0.0, str(row["error"]))
    else:
        d = decode_input(job, bytes(row["data"]), limits)
    return {"source": job.source, "location": job.location, "output": job.output,
            "rgb": _NO_IMAGE if d.rgb is None else d.rgb, "width": -1 if d.width is None else d.width,
            "height": -1 if d.height is None else d.height, "seconds": d.seconds, "error": d.error or ""}


class SegmentActor:
    """One engine per actor; a batch of decoded rows in, their manifest lines out (results written)."""

    def __init__(self, config: BulkConfig) -> None:
        self.segmenter = Segmenter(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = (_decoded(batch, i) for i in range(len(batch["source"])))
        return {"line": np.array([r.to_line() for r in self.segmenter.records(items)], dtype=object)}


def _decoded(batch: dict[str, np.ndarray], i: int) -> Decoded:
    job = Job(str(batch["source"][i]), str(batch["location"][i]), str(batch["output"][i]))
    width, height, error = int(batch["width"][i]), int(batch["height"][i]), str(batch["error"][i])
    return Decoded(job, None if error else np.asarray(batch["rgb"][i]),
                   None if width < 0 else width, None if height < 0 else height,
                   float(batch["seconds"][i]), error or None)
