"""Image codecs by measurement: decoding uploads, encoding results, one core.

    python benchmarks/speed/image_codecs.py --out benchmarks/results                 # about 5 minutes
    python benchmarks/speed/image_codecs.py --out /tmp/c --runs 5 --images 2 --large-images 1   # a smoke run

Inputs are real: CamVid val frames (``--data``, read at run time), as their
PNG files and as JPEGs made from them in memory at quality 90 (Pillow,
4:2:0), at their own 360x480 and upscaled (bicubic) to 4000x3000, the PNG
of the upscale written by Pillow at its default level. Outputs are the
11-class label maps of the same frames (CamVid's ``valannot``, unlabelled
mapped to class 0), nearest-upscaled for 4000x3000, and their overlays.

Decoders, each to RGB uint8 H x W x 3: Pillow (what ``service.codec.decode`` does
with an RGB file: load, then ``np.asarray``), the service's whole
``decode_image`` (sniff, size checks, Pillow, orientation), ``cv2.imdecode``
(RGB flag, EXIF ignored), pyspng (PNG) and simplejpeg (JPEG; strict). Encoders:
the paletted colour PNG at compress level 1 (``service.codec.encode``, Pillow), the
grey label PNG (Pillow, cv2), a colour PNG (cv2: it cannot write palettes), and
the JPEG overlay at quality 90 via Pillow, cv2 (RGB->BGR included) and
simplejpeg, all 4:2:0.

Timing: one core (the process pinned with ``sched_setaffinity``,
``cv2.setNumThreads(1)``), ``--runs`` rounds; in each round every codec runs
once on the same input, so drift hits all of them alike. Per input, the
median over the rounds; the figure is the median over the inputs, and the
ratio to Pillow is taken per input, then the median. Decoded pixels are
compared with Pillow's, and each decoder is run in a thread while another
counts how long it is kept from running: a decoder that holds the GIL would
stall the server's event loop and batcher for the whole decode.
Writes ``OUT/codecs.md`` and ``OUT/raw/codecs.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from service.codec.decode import decode_image  # noqa: E402
from service.codec.encode import encode_color_png, encode_label_png  # noqa: E402

LARGE = (3000, 4000)  # height, width
JPEG_QUALITY = 90
PNG_LEVEL = 1  # service.codec.encode.PNG_COMPRESS_LEVEL
CAMVID_PALETTE = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
                           [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0],
                           [0, 128, 192]], np.uint8)  # only for timing: the same colours the artifact carries

Codec = Callable[[Any], Any]


def optional(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        print(f"{name} not installed: skipped (pip install {name})", file=sys.stderr)
        return None


pyspng = optional("pyspng")
simplejpeg = optional("simplejpeg")


# -- decoders: bytes -> RGB uint8 -------------------------------------------------------------------

def pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def service_decode(data: bytes, fast: bool = True) -> np.ndarray:
    return decode_image(data, content_type=None, max_bytes=1 << 30, max_pixels=10**8, fast_decoders=fast).rgb


def cv2_decode(data: bytes) -> np.ndarray:
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def decoders(fmt: str) -> dict[str, Codec]:
    out: dict[str, Codec] = {"Pillow": pillow_decode,
                             "service decode_image, Pillow only": lambda d: service_decode(d, fast=False),
                             "service decode_image": service_decode, "cv2.imdecode": cv2_decode}
    if fmt == "PNG" and pyspng:
        out["pyspng"] = lambda d: pyspng.load(d, format="RGB")
    if fmt == "JPEG" and simplejpeg:
        out["simplejpeg"] = lambda d: simplejpeg.decode_jpeg(d, colorspace="RGB", strict=True)
    return out


# -- encoders: (labels, rgb) -> bytes ---------------------------------------------------------------

def encoders() -> dict[str, tuple[str, Codec]]:
    """name -> (what it writes, function of (labels, overlay rgb))."""
    png = [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL]
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]

    def pillow_jpeg(rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    out: dict[str, tuple[str, Codec]] = {
        "Pillow paletted PNG (service, today)": ("colour mask",
                                                 lambda a: encode_color_png(a[0], CAMVID_PALETTE)),
        "cv2 colour PNG (BGR)": ("colour mask", lambda a: cv2.imencode(
            ".png", CAMVID_PALETTE[a[0]][:, :, ::-1], png)[1].tobytes()),
        "Pillow grey label PNG (service, today)": ("label ids", lambda a: encode_label_png(a[0], 11)),
        "cv2 grey label PNG": ("label ids", lambda a: cv2.imencode(".png", a[0], png)[1].tobytes()),
        "Pillow JPEG (service, today)": ("overlay JPEG q90", lambda a: pillow_jpeg(a[1])),
        "cv2 JPEG (RGB->BGR included)": ("overlay JPEG q90", lambda a: cv2.imencode(
            ".jpg", cv2.cvtColor(a[1], cv2.COLOR_RGB2BGR), jpeg)[1].tobytes()),
    }
    if simplejpeg:
        out["simplejpeg JPEG"] = ("overlay JPEG q90", lambda a: simplejpeg.encode_jpeg(
            a[1], quality=JPEG_QUALITY, colorspace="RGB", colorsubsampling="420"))
    return out


# -- inputs -----------------------------------------------------------------------------------------

def load_inputs(data: Path, n: int, large: bool) -> list[dict[str, Any]]:
    names = sorted((data / "val").glob("*.png"))[:n]
    if not names:
        raise SystemExit(f"no CamVid val images under {data / 'val'}")
    out = []
    for path in names:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        labels = np.asarray(Image.open(data / "valannot" / path.name)).copy()
        labels[labels >= len(CAMVID_PALETTE)] = 0  # "unlabelled" -> a class, for an 11-class map
        png = path.read_bytes()
        if large:
            rgb = cv2.resize(rgb, LARGE[::-1], interpolation=cv2.INTER_CUBIC)
            labels = cv2.resize(labels, LARGE[::-1], interpolation=cv2.INTER_NEAREST)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, "PNG")
            png = buf.getvalue()
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=JPEG_QUALITY)
        overlay = cv2.addWeighted(rgb, 0.5, CAMVID_PALETTE[labels], 0.5, 0.0)
        out.append({"name": path.name, "PNG": png, "JPEG": buf.getvalue(), "labels": labels,
                    "overlay": overlay})
    return out


def interleaved(codecs: dict[str, Codec], arg: Any, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in codecs}
    for fn in codecs.values():  # warm-up: first-call costs (imports, tables) out of the figures
        fn(arg)
    for _ in range(runs):
        for name, fn in codecs.items():
            t0 = time.perf_counter()
            fn(arg)
            times[name].append(time.perf_counter() - t0)
    return times


#: the cores this process may use before it pins itself to one (the GIL check needs two)
ALL_CPUS = set(os.sched_getaffinity(0))


def gil_gap_ms(fn: Codec, arg: Any, repeats: int = 3) -> float:
    """Longest stretch (ms) a second Python thread waited while ``fn`` ran ``repeats`` times in another.

    A decoder that keeps the GIL stalls the event loop and the batcher for as long as it runs. Run
    on all the process's cores, so that a decoder that releases the GIL shows the scheduler's gaps,
    not one core's time slices.
    """
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, ALL_CPUS)
    done = threading.Event()

    def work() -> None:
        for _ in range(repeats):
            fn(arg)
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    last, worst = time.perf_counter(), 0.0
    while not done.is_set():
        time.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    worker.join()
    os.sched_setaffinity(0, pinned)
    return round(worst * 1000, 1)


def summarise(per_input: list[dict[str, list[float]]], reference: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in per_input[0]:
        meds = [statistics.median(t[name]) * 1000 for t in per_input]
        ratios = [statistics.median(t[name]) / statistics.median(t[reference]) for t in per_input]
        out[name] = {"median_ms": round(statistics.median(meds), 3),
                     "per_input_median_ms": [round(m, 3) for m in meds],
                     "vs_reference": round(statistics.median(ratios), 3),
                     "runs_per_input": len(per_input[0][name])}
    return out


def measure(inputs: list[dict[str, Any]], size: str, runs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for fmt in ("PNG", "JPEG"):
        codecs = decoders(fmt)
        per_input = [interleaved(codecs, x[fmt], runs) for x in inputs]
        diffs: dict[str, int] = {}
        for name, fn in codecs.items():
            worst = 0
            for x in inputs:
                ref, got = pillow_decode(x[fmt]), fn(x[fmt])
                worst = max(worst, 255 if got is None or got.shape != ref.shape else
                            int(np.abs(got.astype(np.int16) - ref).max()))
            diffs[name] = worst
        for name, s in summarise(per_input, "Pillow").items():
            rows.append({"kind": "decode", "format": fmt, "size": size, "codec": name, **s,
                         "max_abs_diff_vs_pillow": diffs[name],
                         "gil_gap_ms": gil_gap_ms(codecs[name], inputs[0][fmt]),
                         "input_kib": round(statistics.median(len(x[fmt]) for x in inputs) / 1024, 1)})
        print(f"decode {fmt} {size}: "
              + ", ".join(f"{r['codec']} {r['median_ms']} ms" for r in rows[-len(codecs):]), flush=True)
    encs = encoders()
    per_input = [interleaved({k: f for k, (_, f) in encs.items()}, (x["labels"], x["overlay"]), runs)
                 for x in inputs]
    stats = summarise(per_input, "Pillow paletted PNG (service, today)")
    for name, (what, fn) in encs.items():
        sizes = [len(fn((x["labels"], x["overlay"]))) for x in inputs]
        rows.append({"kind": "encode", "format": what, "size": size, "codec": name, **stats[name],
                     "output_kib": round(statistics.median(sizes) / 1024, 1)})
    print(f"encode {size}: " + ", ".join(f"{r['codec']} {r['median_ms']} ms" for r in rows[-len(encs):]),
          flush=True)
    return rows


def versions() -> dict[str, Any]:
    import PIL
    from PIL import features

    zlib_ng = features.version_feature("zlib_ng") if features.check_feature("zlib_ng") else None
    return {"python": platform.python_version(), "pillow": PIL.__version__, "pillow_zlib_ng": zlib_ng,
            "pillow_libjpeg_turbo": features.version_feature("libjpeg_turbo"), "opencv": cv2.__version__,
            "pyspng": getattr(pyspng, "__version__", None),
            "simplejpeg": getattr(simplejpeg, "__version__", None),
            "numpy": np.__version__, "cpu": next((line.split(":", 1)[1].strip() for line in
                                                 Path("/proc/cpuinfo").read_text().splitlines()
                                                 if line.startswith("model name")), None),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def markdown(result: dict[str, Any]) -> str:
    v, s = result["versions"], result["settings"]
    lines = [f"# Image codecs, one core ({result['started']})", "",
             f"Generated by `benchmarks/speed/image_codecs.py`. {v['cpu']}; pinned to CPU {s['cpu']}, "
             f"`cv2.setNumThreads(1)`; load average at start {v['loadavg']} (a shared machine: "
             "compare ratios within this run, not with other runs). Median of the per-input medians of "
             f"{s['runs']} interleaved rounds; {s['images']} CamVid val frames at 360x480, "
             f"{s['large_images']} upscaled to 4000x3000. Pillow {v['pillow']} (zlib-ng "
             f"{v['pillow_zlib_ng']}, libjpeg-turbo {v['pillow_libjpeg_turbo']}), OpenCV {v['opencv']}, "
             f"pyspng {v['pyspng']}, simplejpeg {v['simplejpeg']}.", "",
             "## Decoding uploads (to RGB uint8)", "",
             "\"GIL gap\": the longest a second Python thread waited (ms, sleeping 1 ms at a time) while "
             "the decoder ran in another, the process on all its cores for this one check; one as long "
             "as the decode means it never releases the GIL, "
             "so in the server it would stall the event loop and the batcher.", "",
             "| format | size | input KiB | decoder | ms | vs Pillow | max abs diff vs Pillow | GIL gap ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['format']} | {r['size']} | {r['input_kib']} | {r['codec']} | {r['median_ms']:.2f} | "
              f"{r['vs_reference']:.2f}x | {r['max_abs_diff_vs_pillow']} | {r['gil_gap_ms']} |"
              for r in result["rows"] if r["kind"] == "decode"]
    lines += ["", "## Encoding results", "",
              "Ratios against the service's paletted colour PNG (Pillow, level 1).", "",
              "| output | size | encoder | ms | vs paletted PNG | output KiB |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['format']} | {r['size']} | {r['codec']} | {r['median_ms']:.2f} | "
              f"{r['vs_reference']:.2f}x | {r['output_kib']} |"
              for r in result["rows"] if r["kind"] == "encode"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--runs", type=int, default=30, help="rounds per input (median)")
    p.add_argument("--images", type=int, default=5, help="CamVid frames at 360x480")
    p.add_argument("--large-images", type=int, default=3, help="frames upscaled to 4000x3000 (0: none)")
    p.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last one allowed)")
    args = p.parse_args(argv)
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    cv2.setNumThreads(1)
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": versions(),
                              "settings": {"runs": args.runs, "images": args.images,
                                           "large_images": args.large_images, "cpu": cpu,
                                           "jpeg_quality": JPEG_QUALITY, "png_level": PNG_LEVEL}, "rows": []}
    result["rows"] += measure(load_inputs(args.data, args.images, large=False), "360x480", args.runs)
    if args.large_images:
        large = load_inputs(args.data, args.large_images, large=True)
        result["rows"] += measure(large, "4000x3000", args.runs)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    (args.out / "raw" / "codecs.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "codecs.md").write_text(markdown(result))
    print(f"wrote {args.out / 'codecs.md'} and {args.out / 'raw' / 'codecs.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
