"""``pspnet-serve segment``: segment files, folders and patterns through the serving chain, no HTTP.

    pspnet-serve segment photos/ 'more/**/*.jpg' one.png --out masks/ [--output ...] [--overwrite]
    pspnet-serve segment s3://bucket/frames/ --out /shared/masks --ray [--ray-address ADDR]
                         [--num-workers N] [--cpus-per-worker C] [--gpus-per-worker G]

Inputs and where results go (mirroring the inputs' paths under ``--out``): service.offline.inputs.
The work per image, the same with and without Ray: service.offline.work. ``--ray`` runs it as a
Ray Data pipeline on a local or an existing cluster: service.offline.on_ray. Every result is written
atomically; ``--out/manifest.jsonl`` records each input (service.offline.manifest); outputs already
there are skipped unless ``--overwrite``, so an interrupted run resumes where it stopped.
Images over ``--max-pixels`` or that cannot be read or decoded are recorded and skipped.

Exit status: 0 when every input was segmented (now or before), 1 when some failed (each named on
stderr, and in the manifest), 2 for usage errors (bad flags, no inputs, no model, no Ray).

SIGHUP is ignored: a run has nothing to reload, and a ``kill -HUP`` meant for a server must not
end it.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from service.codec.outputs import FORMATS, OutputOptions
from service.contract.artifact import ArtifactError
from service.contract.description import read_description
from service.engine.sessions import Engine
from service.errors import ServiceError
from service.offline.flags import add_inference_flags, load_engine
from service.offline.inputs import InputError, expand_inputs, output_names
from service.offline.manifest import ManifestWriter, Record, earlier_records, skipped_record
from service.offline.on_ray import RayOptions
from service.offline.work import BulkConfig, Job, output_suffix, segment_locally
from service.pipeline.params import resolve
from service.settings import Settings, add_settings_flags, settings_from

#: the settings ``segment`` takes as flags (env PSPNET_* as for the server): outputs, pixel limit
OUTPUT_SETTINGS = ("overlay_alpha", "jpeg_quality", "max_pixels")
#: the flags that only mean something with --ray
RAY_FLAGS = ("ray_address", "num_workers", "cpus_per_worker", "gpus_per_worker")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def segment_settings(args: argparse.Namespace) -> Settings:
    """The server's settings (env, then flags), as for a request; a bad value exits 2."""
    args.setting_model = str(args.model)
    return settings_from(args)


def output_options(args: argparse.Namespace, settings: Settings) -> OutputOptions:
    return OutputOptions.from_settings(settings, overlay_format=args.overlay_format,
                                       include_mask=args.include_mask, class_name=args.class_name)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pspnet-serve segment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive), glob patterns, or (pyarrow) URIs")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (created): results mirror the inputs' paths, plus manifest.jsonl")
    p.add_argument("--output", choices=list(FORMATS), default="color")
    p.add_argument("--overlay-format", choices=("jpeg", "png"), default="jpeg",
                   help="file format of --output overlay")
    p.add_argument("--include-mask", action="store_true", help="--output json: add the label PNG, base64")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="--output probability: the class whose probability to write")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose output is already there")
    p.add_argument("--device-stitch", choices=("auto", "on", "off"), default="auto",
                   help="stitch on the device the batches ran on (float32; auto: with CUDA), or off: the "
                        "exact float64 host stitch (as the server's PSPNET_DEVICE_STITCH)")
    p.add_argument("--device-stitch-mb", type=int, default=4096, metavar="MB",
                   help="device memory the stitches may hold at once (each Ray actor its own)")
    add_settings_flags(p, only=OUTPUT_SETTINGS)
    add_inference_flags(p)
    r = p.add_argument_group("Ray", "run as a Ray Data pipeline (needs the ray extra)")
    r.add_argument("--ray", action="store_true", help="a local Ray cluster, or the one named below")
    r.add_argument("--ray-address", help="join this cluster (default: $RAY_ADDRESS, else start a local one)")
    r.add_argument("--num-workers", type=int, help="model actors, one engine each (default 1)")
    r.add_argument("--cpus-per-worker", type=float, help="CPUs each actor reserves (default 1)")
    r.add_argument("--gpus-per-worker", type=float, help="GPUs each actor reserves (default 0)")
    return p


def plan_jobs(specs: list[str], out: Path, suffix: str) -> list[Job]:
    """Inputs expanded and laid out under ``out``; an :class:`InputError` for a usage error."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is not a folder")
    inputs = expand_inputs(specs, exclude=out)
    jobs = [Job(i.source, i.location, str(name)) for i, name in zip(inputs, output_names(inputs, suffix),
                                                                     strict=True)]
    for job in jobs:
        if os.path.abspath(out / job.output) == job.location:
            raise InputError(f"{job.source} would be overwritten by its own result: choose another --out")
    return jobs


def ignore_sighup() -> None:
    """SIGHUP does nothing in this process from now on (where there is one; only the main thread
    may set a handler: elsewhere, as in a test calling segment_main, it is left as it is).

    A handler that returns, not SIG_IGN: an ignored signal stays ignored across exec, in every
    process the run starts (a local Ray cluster's), where a handler is reset to the default. Not
    restored at the end: the process would die of a SIGHUP between its last write and its exit.
    """
    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, _sighup)


def _sighup(signum: int, frame: object) -> None:
    """Nothing: a segment run has nothing to reload (and prints nothing: the terminal may be gone)."""


def segment_main(argv: list[str]) -> int:
    ignore_sighup()
    return _segment(argv)


def _segment(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    settings = segment_settings(args)
    options = output_options(args, settings)
    ray_opts = _ray_options(p, args)
    try:
        meta = read_description(args.model).meta
    except ArtifactError as e:
        print(f"pspnet-serve: {e}", file=sys.stderr)
        return 2
    try:
        params = resolve(meta.protocol, mode=args.mode, flip=args.flip, scales=args.scales, max_scales=32)
        jobs = plan_jobs(args.images, args.out, output_suffix(meta, args.output, options))
    except (ServiceError, InputError) as e:
        p.error(str(e))
    # absolute: Ray's workers do not share the driver's working folder
    config = BulkConfig(model=args.model.absolute(), params=params, output=args.output, options=options,
                        out=args.out.absolute(), max_pixels=settings.max_pixels, provider=args.provider,
                        threads=args.threads, max_batch=args.max_batch, device_stitch=args.device_stitch,
                        device_stitch_mb=args.device_stitch_mb)
    if ray_opts is not None:
        from service.offline.on_ray import RayUnavailable, import_ray

        try:
            import_ray()
        except RayUnavailable as e:
            print(f"pspnet-serve segment: {e}", file=sys.stderr)
            return 2
    engine = load_engine(args) if ray_opts is None else None
    return _run(config, jobs, args.overwrite, engine, ray_opts)


def _ray_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> RayOptions | None:
    given = [f"--{f.replace('_', '-')}" for f in RAY_FLAGS if getattr(args, f) is not None]
    if not args.ray:
        if given:
            p.error(f"{', '.join(given)} only with --ray")
        return None
    opts = RayOptions(address=args.ray_address, num_workers=args.num_workers or 1,
                      cpus_per_worker=1.0 if args.cpus_per_worker is None else args.cpus_per_worker,
                      gpus_per_worker=args.gpus_per_worker or 0.0)
    if args.num_workers is not None and args.num_workers < 1:
        p.error("--num-workers must be at least 1")
    if opts.cpus_per_worker <= 0 or opts.gpus_per_worker < 0:
        p.error("--cpus-per-worker must be above 0 and --gpus-per-worker at least 0")
    return opts


def _run(config: BulkConfig, jobs: list[Job], overwrite: bool, engine: Engine | None,
         ray_opts: RayOptions | None) -> int:
    """Skip what is done, segment the rest, write the manifest; the exit status."""
    out = config.out
    earlier = earlier_records(out)
    manifest = ManifestWriter(out)
    todo = []
    for job in jobs:
        if not overwrite and (out / job.output).is_file():
            manifest.add(skipped_record(job.source, job.output, earlier.get(job.output)))
        else:
            todo.append(job)
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} already done in {out} (--overwrite redoes them)",
              file=sys.stderr)
    bar = tqdm(total=len(todo), desc="segment", unit="img", dynamic_ncols=True)
    try:
        for record in _records(config, todo, engine, ray_opts):
            manifest.add(record)
            bar.update()
            if record.status == "error":
                tqdm.write(f"failed: {record.input}: {record.error}", file=sys.stderr)
    except Exception as e:  # the Ray pipeline died (a worker without the model, a lost node): record it
        text = _ANSI.sub("", str(e)).strip()  # Ray colours its messages
        why = f"{type(e).__name__}: {(text.splitlines() or [''])[0][:300]}"
        tqdm.write(f"pspnet-serve segment: the run stopped: {why}", file=sys.stderr)
        for job in todo:
            if manifest.get(job.source) is None:
                manifest.add(Record(job.source, None, "error", error=f"the run stopped: {why}"))
    except BaseException:
        manifest.close()  # interrupted: the partial manifest stays for the next run
        raise
    finally:
        bar.close()
    path = manifest.finish(j.source for j in jobs)
    counts = {s: sum(r.status == s for r in manifest.records) for s in ("ok", "skipped", "error")}
    print(f"{counts['ok']} segmented, {counts['skipped']} already done, {counts['error']} failed; "
          f"manifest: {path}")
    return 1 if counts["error"] else 0


def _records(config: BulkConfig, todo: list[Job], engine: Engine | None,
             ray_opts: RayOptions | None) -> Iterator[Record]:
    if not todo:
        return iter(())
    if ray_opts is None:
        return segment_locally(config, todo, engine)
    from service.offline.on_ray import segment_on_ray

    return segment_on_ray(config, todo, ray_opts)
