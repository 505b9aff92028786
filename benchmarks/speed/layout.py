"""Execution layout on this machine's cores: one session with many threads, or many sessions of one.

    python benchmarks/speed/layout.py --out benchmarks/results                       # about 20 minutes
    python benchmarks/speed/layout.py --out /tmp/l --seconds 2 --windows 1 --batches 1 \
        --models weights/pspnet_camvid_int8.onnx                              # a smoke run
    python benchmarks/speed/layout.py --out benchmarks/results --render   # layout.md again from the JSON

Raw ONNX Runtime, no HTTP, no pre/post-processing, the sessions built with the
serving engine's options (``service.engine.sessions.session_options``: full graph
optimisation, one inter-op thread, spinning off unless ``--spin on/both``).
A layout ``SxT`` is S sessions of T intra-op threads each, every session
driven by its own Python thread calling ``session.run`` back to back on a
batch of B copies of one tile (a CamVid val frame resized to the model's
tile); ORT releases the GIL, so the S runs overlap. Default layouts for N
cores: ``1xN`` (the engine's default), ``Nx1``, ``1x1`` and, for N >= 4, ``(N/2)x2``.

Per layout, batch size and spin setting: ``--windows`` windows of
``--seconds`` each (every session busy for the whole window; a window ends
when the last run started in it returns); tiles/s = tiles / window time, the
median over the windows; the latency of a run and per tile while all S
sessions are busy (median, p90); and the latency at concurrency 1: one
caller, one tile, the other sessions idle (median of ``--single-runs`` runs),
which is what a lone request waits for the model in that layout.

Writes ``OUT/layout.md`` and ``OUT/raw/layout.json``. On a shared machine
the figures drift: compare layouts within one run (they are interleaved per
window so that a noisy minute hits each alike).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402

from service.contract.artifact import INPUT_NAME, OUTPUT_NAME, read_meta  # noqa: E402
from service.engine.sessions import session_options  # noqa: E402

DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "camvid" / "val" / "0016E5_07959.png"


def default_layouts(cores: int) -> list[str]:
    layouts = [f"1x{cores}", f"{cores}x1", "1x1"]
    if cores >= 4 and cores % 2 == 0:
        layouts.insert(2, f"{cores // 2}x2")
    return list(dict.fromkeys(layouts))  # 1 core: "1x1" once


def parse_layout(text: str) -> tuple[int, int]:
    sessions, _, threads = text.partition("x")
    s, t = int(sessions), int(threads)
    if s < 1 or t < 1:
        raise ValueError(f"layout {text!r}: sessions and threads must be at least 1")
    return s, t


def make_tile(image: Path, tile: tuple[int, int]) -> np.ndarray:
    """(3, H, W) float32, 0..255: the image resized to the tile, as mode=whole feeds the model."""
    rgb = np.asarray(Image.open(image).convert("RGB"))
    rgb = cv2.resize(rgb, tile[::-1], interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


class Layout:
    """S sessions of T threads on one model, and the batch each runs."""

    def __init__(self, model: Path, sessions: int, threads: int, spin: bool) -> None:
        self.name, self.spin = f"{sessions}x{threads}", spin
        self.sessions = [ort.InferenceSession(str(model), sess_options=session_options(threads, 1, spin=spin),
                                              providers=["CPUExecutionProvider"]) for _ in range(sessions)]

    def run(self, session: Any, x: np.ndarray) -> None:
        session.run([OUTPUT_NAME], {INPUT_NAME: x})

    def window(self, x: np.ndarray, seconds: float) -> tuple[float, list[float]]:
        """All sessions busy for ``seconds``: (tiles/s, every run's seconds)."""
        runs: list[list[float]] = [[] for _ in self.sessions]
        start = time.perf_counter()
        stop_at = start + seconds

        def drive(i: int) -> None:
            while time.perf_counter() < stop_at or not runs[i]:
                t0 = time.perf_counter()
                self.run(self.sessions[i], x)
                runs[i].append(time.perf_counter() - t0)

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(self.sessions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        done = [r for per in runs for r in per]
        return len(done) * x.shape[0] / elapsed, done

    def single(self, tile: np.ndarray, runs: int) -> list[float]:
        """Concurrency 1: one caller, one tile, on the first session; the others idle."""
        x = tile[None]
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.run(self.sessions[0], x)
            out.append(time.perf_counter() - t0)
        return out


def measure_model(model: Path, image: Path, layouts: list[str], batches: list[int], spins: list[bool],
                  seconds: float, windows: int, single_runs: int) -> list[dict[str, Any]]:
    meta = read_meta(model)
    tile = make_tile(image, meta.tile)
    built = {(name, spin): Layout(model, *parse_layout(name), spin) for name in layouts for spin in spins}
    rows: list[dict[str, Any]] = []
    for b in batches:
        x = np.ascontiguousarray(np.broadcast_to(tile, (b, *tile.shape)))
        for lay in built.values():  # warm-up: first runs of a shape plan memory
            for s in lay.sessions:
                lay.run(s, x)
                lay.run(s, x)
        rates: dict[tuple[str, bool], list[float]] = {k: [] for k in built}
        times: dict[tuple[str, bool], list[float]] = {k: [] for k in built}
        for _ in range(windows):  # interleaved: each window visits every layout once
            for key, lay in built.items():
                rate, done = lay.window(x, seconds)
                rates[key].append(rate)
                times[key] += done
        for (name, spin), lay in built.items():
            run_ms = np.asarray(times[(name, spin)]) * 1000
            single = lay.single(tile, single_runs) if b == 1 else []
            row = {"model": model.name, "layout": name, "sessions": len(lay.sessions),
                   "threads": parse_layout(name)[1], "spin": spin, "batch": b,
                   "tiles_per_s": round(statistics.median(rates[(name, spin)]), 3),
                   "tiles_per_s_windows": [round(r, 3) for r in rates[(name, spin)]],
                   "runs": len(run_ms), "median_run_ms": round(float(np.median(run_ms)), 2),
                   "p90_run_ms": round(float(np.percentile(run_ms, 90)), 2),
                   "median_ms_per_tile_in_run": round(float(np.median(run_ms)) / b, 2),
                   "single_c1_median_ms": round(statistics.median(single) * 1000, 2) if single else None,
                   "single_c1_p90_ms": round(float(np.percentile(single, 90)) * 1000, 2) if single else None}
            rows.append(row)
            print(f"{model.name} {name} spin {'on ' if spin else 'off'} batch {b}: {row['tiles_per_s']:7.2f} "
                  f"tiles/s, run {row['median_run_ms']:7.1f} ms"
                  + (f", c1 {row['single_c1_median_ms']} ms" if single else ""), flush=True)
    return rows


def conclusions(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: the best layout for throughput (any batch, spin) and for latency at concurrency 1."""
    out: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        best = max(mine, key=lambda r: r["tiles_per_s"])
        best_window = max(mine, key=lambda r: max(r["tiles_per_s_windows"]))
        fast = min((r for r in mine if r["single_c1_median_ms"]), key=lambda r: r["single_c1_median_ms"])
        engine_default = next((r for r in mine if r["sessions"] == 1 and r["threads"] > 1 and not r["spin"]
                               and r["batch"] == best["batch"]), None)
        out[model] = {
            "throughput": {k: best[k] for k in ("layout", "batch", "spin", "tiles_per_s")},
            # on a shared machine the least disturbed window is the nearest to a quiet machine's figure
            "throughput_best_window": {**{k: best_window[k] for k in ("layout", "batch", "spin")},
                                       "tiles_per_s": max(best_window["tiles_per_s_windows"])},
            "latency_c1": {k: fast[k] for k in ("layout", "spin", "single_c1_median_ms")},
            "engine_default_at_that_batch": ({k: engine_default[k] for k in ("layout", "tiles_per_s")}
                                             if engine_default else None),
            "scaling": scaling(mine)}
    return out


def scaling(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The two numbers the layout rule needs, from 1x1, 1xN and Nx1 (spin off), N = the most threads.

    ``intra_op_efficiency`` E = t(1x1) / (N * t(1xN)), single-tile latency at concurrency 1: how much
    of N cores one session turns into speed. ``sessions_efficiency`` M = r(Nx1) / (N * r(1x1)),
    tiles/s of the best window over the batches: how much of N cores N single-thread sessions turn into
    throughput (memory bandwidth and caches are shared). M > E: more sessions of fewer threads
    give more throughput; E decides how fast a lone request is.
    """
    off = [{**r, "best_window": max(r["tiles_per_s_windows"])} for r in rows if not r["spin"]]
    n = max((r["sessions"] * r["threads"] for r in off), default=1)

    def best(sessions: int, threads: int, key: str, better: Any) -> float | None:
        values = [r[key] for r in off if (r["sessions"], r["threads"]) == (sessions, threads) and r[key]]
        return better(values) if values else None

    t1, tn = best(1, 1, "single_c1_median_ms", min), best(1, n, "single_c1_median_ms", min)
    r1, rn = best(1, 1, "best_window", max), best(n, 1, "best_window", max)
    if n < 2 or None in (t1, tn, r1, rn):
        return None
    assert t1 is not None and tn is not None and r1 is not None and rn is not None
    return {"cores": n, "intra_op_efficiency": round(t1 / (n * tn), 3),
            "sessions_efficiency": round(rn / (n * r1), 3),
            "t_1x1_ms": t1, f"t_1x{n}_ms": tn, "r_1x1": r1, f"r_{n}x1": rn}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# Execution layout, raw ONNX Runtime ({result['started']})", "",
             f"Generated by `benchmarks/speed/layout.py`. {m['cpu']}, {m['cores']} cores, onnxruntime "
             f"{m['onnxruntime']}; load average at start {m['loadavg_at_start']}, at end "
             f"{result.get('loadavg_at_end')}: a shared machine (other people's jobs ran meanwhile), so "
             "compare layouts within this run. `SxT` = S sessions of T intra-op threads, each session "
             "driven by its own thread; session options as the engine sets them. "
             f"{result['settings']['windows']} windows of {result['settings']['seconds']:g} s per point "
             f"(median); concurrency-1 latency: median of {result['settings']['single_runs']} single-tile "
             "runs on one session with the others idle.", ""]
    for model, c in result["conclusions"].items():
        t, lat = c["throughput"], c["latency_c1"]
        default = c["engine_default_at_that_batch"]
        bw = c.get("throughput_best_window")
        lines.append(f"- `{model}`: most tiles/s with **{t['layout']}** at batch {t['batch']}, spin "
                     f"{'on' if t['spin'] else 'off'} ({t['tiles_per_s']} tiles/s"
                     + (f"; the engine's default layout {default['layout']} at that batch: "
                        f"{default['tiles_per_s']}" if default else "")
                     + f"); lowest latency at concurrency 1 with **{lat['layout']}**, spin "
                     f"{'on' if lat['spin'] else 'off'} ({lat['single_c1_median_ms']} ms)."
                     + (f" Best single window: {bw['layout']} at batch {bw['batch']}, spin "
                        f"{'on' if bw['spin'] else 'off'}, {bw['tiles_per_s']} tiles/s." if bw else ""))
    lines += ["", "## The rule for other core counts", "",
              "With N cores, S sessions of T intra-op threads, S x T = N (more threads than cores makes "
              "every intra-op barrier wait for a thread that is not running). Two efficiencies, measured "
              "here on this machine's cores (spin off): E, how much of N cores one session turns into "
              "single-tile speed, E = t(1x1) / (N t(1xN)); M, how much of N cores N one-thread sessions "
              "turn into throughput, M = r(Nx1) / (N r(1x1)).", ""]
    for model, c in result["conclusions"].items():
        sc = c.get("scaling")
        if sc:
            lines.append(f"- `{model}`: E = {sc['intra_op_efficiency']}, M = {sc['sessions_efficiency']} "
                         f"on {sc['cores']} cores.")
    lines += ["",
              "- Throughput: S = N / T sessions of T threads make roughly N r(1x1) E_T M_S tiles/s, E_T "
              "the intra-op efficiency at T threads (E_1 = 1) and M_S the sessions' at S sessions (M_1 = "
              "1): Nx1 beats 1xN when M > E. E_T falls as T grows (more barriers per op, smaller work per "
              "thread), M_S as S grows (shared caches and memory bandwidth).",
              "- Latency at concurrency 1: a lone request gets one session, so t = t(1x1) / (T E_T): the "
              "most threads per session gives the lowest latency.",
              "- Both: sessions = cores / threads-per-session, where threads-per-session is the smallest T "
              "whose t(1x1) / (T E_T) meets the latency budget; then keep at least S batches in flight "
              "(concurrency >= S x max_batch) or the extra sessions idle. Measure E_T and M on the target "
              "machine: they depend on its caches and memory bandwidth, and on a shared machine on the "
              "neighbours.", ""]
    lines += ["", "\"best window\": the least disturbed of the windows, the nearest this run gets to a "
              "quiet machine (on a shared one a window in which a neighbour took a core reads about half).",
              "", "| model | layout | spin | batch | tiles/s (median) | best window | windows | "
              "run ms p50 / p90 | ms per tile in a run | c1 latency ms p50 / p90 |", "|" + "---|" * 10]
    for r in result["rows"]:
        c1 = (f"{r['single_c1_median_ms']} / {r['single_c1_p90_ms']}" if r["single_c1_median_ms"] else "-")
        lines.append(f"| {r['model']} | {r['layout']} | {'on' if r['spin'] else 'off'} | {r['batch']} | "
                     f"{r['tiles_per_s']} | {max(r['tiles_per_s_windows'])} | "
                     f"{' / '.join(str(w) for w in r['tiles_per_s_windows'])} | "
                     f"{r['median_run_ms']} / {r['p90_run_ms']} | {r['median_ms_per_tile_in_run']} | {c1} |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "onnxruntime": ort.__version__,
            "python": platform.python_version(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    weights = ROOT / "weights"
    p.add_argument("--models", type=Path, nargs="+",
                   default=[weights / "pspnet_camvid.onnx", weights / "pspnet_camvid_int8.onnx"])
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    p.add_argument("--layouts", nargs="+", help="SxT: S sessions of T threads (default: see above)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--spin", choices=["on", "off", "both"], default="both", help="ORT thread spinning")
    p.add_argument("--seconds", type=float, default=10.0, help="per window")
    p.add_argument("--windows", type=int, default=3, help="windows per point (median)")
    p.add_argument("--single-runs", type=int, default=20, help="runs for the concurrency-1 latency")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--render", action="store_true",
                   help="only re-render OUT/layout.md (and the conclusions) from OUT/raw/layout.json")
    args = p.parse_args(argv)
    if args.render:
        result = json.loads((args.out / "raw" / "layout.json").read_text())
        result["conclusions"] = conclusions(result["rows"])
        (args.out / "raw" / "layout.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "layout.md").write_text(markdown(result))
        return 0
    cores = len(os.sched_getaffinity(0))
    layouts = args.layouts or default_layouts(cores)
    for name in layouts:
        parse_layout(name)
    spins = {"on": [True], "off": [False], "both": [False, True]}[args.spin]
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
                              "settings": {"layouts": layouts, "batches": args.batches, "spins": spins,
                                           "seconds": args.seconds, "windows": args.windows,
                                           "single_runs": args.single_runs, "image": args.image.name},
                              "rows": []}
    for model in args.models:
        result["rows"] += measure_model(model, args.image, layouts, args.batches, spins, args.seconds,
                                        args.windows, args.single_runs)
    result["conclusions"] = conclusions(result["rows"])
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    (args.out / "raw" / "layout.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "layout.md").write_text(markdown(result))
    print(f"wrote {args.out / 'layout.md'} and {args.out / 'raw' / 'layout.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
