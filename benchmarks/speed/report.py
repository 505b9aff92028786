"""Turn ``benchmarks/results/results.json`` (benchmarks/speed/suite.py) into ``results.md``,
``plot.png`` and ``rss.png``.

    python benchmarks/speed/report.py benchmarks/results/results.json     # re-render without re-measuring

Targets of issue #6 are checked here, each as a ratio of figures measured in
the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

#: profile categories, first match wins, matched against every frame of a sampled stack
CATEGORIES = (
    ("inference (ONNX Runtime)", ("onnxruntime", "service/engine/sessions.py")),
    ("decode", ("decode_image", "service/codec/decode.py", "service/codec/sniff.py")),
    ("plan (resize, tiles)", ("plan_tiles", "prepare")),
    ("stitch (softmax, argmax)", ("service/protocol/stitch.py", "service/protocol/resize.py")),
    ("encode", ("service/codec/encode.py", "_encode (")),
    ("metrics", ("prometheus_client",)),
    ("HTTP, asyncio, batching", ("uvicorn", "starlette", "fastapi", "h11", "httptools", "asyncio",
                                 "service/api/app.py", "service/engine/batcher.py",
                                 "service/api/middleware.py",
                                 "service/pipeline/chain.py", "concurrent/futures", "threading.py")),
)


def _get(d: dict[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, ratio, met) for each target of the issue."""
    rows: list[tuple[str, str, str, bool | None]] = []
    service = r.get("service") or {}
    limit = _get(r, "ort_limit", "limit_tiles_per_s")
    if service and limit:
        best_c, best = max(((c, v["throughput_rps"] or 0.0) for c, v in service.items()), key=lambda x: x[1])
        ratio = best / limit
        rows.append(("served throughput at saturation >= 90% of raw ORT (whole)",
                     f"{best:.2f} req/s (c={best_c}) vs {limit:.2f} tiles/s at batch "
                     f"{r['ort_limit']['best_batch']}", f"{ratio:.1%}", ratio >= 0.9))
        tuned = max(r.get("tuning") or [], key=lambda t: t["throughput_rps"] or 0.0, default=None)
        if tuned and (tuned["throughput_rps"] or 0.0) > best:
            name = ", ".join(f"{k}={v}" for k, v in tuned["settings"].items()) or "defaults"
            ratio = tuned["throughput_rps"] / limit
            rows.append((f"... with the best settings tried ({name}, c={tuned.get('concurrency', 8)})",
                         f"{tuned['throughput_rps']:.2f} req/s", f"{ratio:.1%}", ratio >= 0.9))
        limit_after = _get(r, "ort_limit_after", "limit_tiles_per_s")
        if limit_after:
            ratio = best / max(limit, limit_after)
            rows.append(("... against the better of the limits measured before and after the service",
                         f"{best:.2f} req/s vs {max(limit, limit_after):.2f} tiles/s", f"{ratio:.1%}",
                         ratio >= 0.9))
    naive8 = _get(r, "naive", "8", "throughput_rps")
    ours8 = _get(r, "service", "8", "throughput_rps")
    if naive8 and ours8:
        ratio = ours8 / naive8
        rows.append(("throughput >= 2x the naive server at concurrency 8",
                     f"{ours8:.2f} vs {naive8:.2f} req/s", f"{ratio:.2f}x", ratio >= 2))
    p99 = _get(r, "service", "1", "latency_ms", "p99")
    single = _get(r, "ort_limit", "single_image_ms")
    if p99 and single:
        ratio = p99 / single
        rows.append(("p99 at concurrency 1 <= 1.2x single-image inference",
                     f"{p99:.1f} ms vs {single:.1f} ms", f"{ratio:.2f}x", ratio <= 1.2))
    for mode, row in (_get(r, "protocol", "modes") or {}).items():
        rows.append((f"{mode} on 1024x2048 >= 2x faster than the PyTorch reference",
                     f"{row['ours_s']} s (ORT spin {'on' if row.get('ours_spin', False) else 'off'}) vs "
                     f"{row['reference_s']} s ({row['tiles']} tiles)",
                     f"{row['speedup']:.2f}x", row["speedup"] >= 2))
    i8 = r.get("int8") or {}
    if i8.get("service"):  # the same targets for the int8 artifact: its own limit, the naive server
        sub = {"service": i8["service"], "ort_limit": i8.get("ort_limit"), "naive": r.get("naive"),
               "protocol": i8.get("protocol")}
        rows += [(f"int8: {t}", v, ratio, ok) for t, v, ratio, ok in targets(sub)]
    rss = _get(r, "rss_run", "rss")
    if rss:
        worst = max(abs(rss["growth"]), abs(rss["max_over_start"]))
        rows.append((f"RSS flat within 10% over {r['rss_run']['load']['duration_s']:g} s of load",
                     f"start {rss['start_mib']} MiB, end {rss['end_mib']}, max {rss['max_mib']}",
                     f"{rss['growth']:+.1%} end, {rss['max_over_start']:+.1%} max", worst <= 0.1))
    return rows


def profile_summary(path: Path, top: int = 12) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> share of samples per category and per leaf function."""
    cats: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        cat = next((name for name, keys in CATEGORIES if any(k in f for f in frames for k in keys)), "other")
        cats[cat] += n
        leaves[frames[-1]] += n
    return {"samples": total,
            "categories": {k: round(v / total, 4) for k, v in cats.most_common()} if total else {},
            "top_leaves": [(k, round(v / total, 4)) for k, v in leaves.most_common(top)] if total else []}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        return "-" if x is None else str(x)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _batches(rep: dict[str, Any]) -> str | None:
    b = rep.get("batches")
    return f"{b['mean_tiles']} ({', '.join(f'{k}:{v}' for k, v in b['sizes'].items())})" if b else None


def litserve_section(r: dict[str, Any]) -> list[str]:
    """Baseline 4: LitServe and the service in one block, the same multipart upload."""
    ls = r.get("litserve") or {}
    servers = ls.get("servers") or {}
    if not servers:
        return []
    rows = []
    for entry in servers.values():
        for c, rep in (entry.get("runs") or {}).items():
            lat = rep["latency_ms"]
            check = entry.get("check") or {}
            stop = entry.get("stop") or {}
            rows.append([entry["description"], entry.get("processes", "-"), c, rep["throughput_rps"],
                         lat["p50"], lat["p90"], lat["p99"], sum(rep["errors"].values()),
                         rep.get("server_processes_cpu_ms_per_ok"), rep.get("foreign_cores"),
                         check.get("labels_agree_with_service", "-"),
                         f"exit {stop.get('exit_code')}, {stop.get('stop_seconds')} s, "
                         f"{stop.get('stray_processes_killed')} stray" if stop else "-"])
    parts = [f"## Baseline 4: LitServe on the same ONNX file (`{ls['model']}`)", "",
             "Each server alone on the machine in turn, the same multipart upload (field `image`) from the "
             "same load generator, closed loop. LitServe as its users write it "
             "(benchmarks/speed/litserve_server.py): "
             "Pillow decode, cv2 resize only off the tile size, ORT session per worker, its own dynamic "
             "batching (max_batch_size 4, batch_timeout 2 ms), argmax, paletted PNG. \"CPU ms/req\": CPU of "
             "all the server's processes per answered request. \"labels agree\": share of pixels where "
             "LitServe's mask names the service's class for the request image.", "",
             _table(["server", "processes", "conc.", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors",
                     "CPU ms/req", "others' cores", "labels agree", "shutdown"], rows), ""]
    ours = servers.get("service", {}).get("runs") or {}
    for key, entry in servers.items():
        theirs = entry.get("runs") or {}
        if key == "service" or not theirs:
            continue
        line = []
        if _get(ours, "8", "throughput_rps") and _get(theirs, "8", "throughput_rps"):
            a, b = ours["8"]["throughput_rps"], theirs["8"]["throughput_rps"]
            line.append(f"req/s at concurrency 8 {a} vs {b} (**{a / b:.2f}x**)")
        if _get(ours, "1", "latency_ms", "p99") and _get(theirs, "1", "latency_ms", "p99"):
            a, b = ours["1"]["latency_ms"]["p99"], theirs["1"]["latency_ms"]["p99"]
            line.append(f"p99 at concurrency 1 {a} vs {b} ms (**{a / b:.2f}x** LitServe's)")
        if line:
            parts += [f"- service vs {entry['description']}: " + "; ".join(line) + ".", ""]
    return parts


def layout_section(r: dict[str, Any]) -> list[str]:
    lay = r.get("layout") or {}
    if not lay.get("rows"):
        return []
    batches = lay["settings"]["batches"]
    keys = list(dict.fromkeys((x["model"], x["layout"], x["spin"]) for x in lay["rows"]))
    rows = []
    for model, layout, spin in keys:
        mine = {x["batch"]: x for x in lay["rows"]
                if (x["model"], x["layout"], x["spin"]) == (model, layout, spin)}
        rows.append([model, layout, "on" if spin else "off", *[_get(mine, b, "tiles_per_s") for b in batches],
                     _get(mine, 1, "single_c1_median_ms")])
    parts = ["## Execution layout: raw ONNX Runtime, sessions x intra-op threads (layout.md)", "",
             f"`SxT`: S sessions of T threads, each session run by its own thread; load average at start "
             f"{lay['machine']['loadavg_at_start']}. Median of {lay['settings']['windows']} windows of "
             f"{lay['settings']['seconds']:g} s.", ""]
    for model, c in (lay.get("conclusions") or {}).items():
        t, lat = c["throughput"], c["latency_c1"]
        parts.append(f"- `{model}`: throughput best with {t['layout']} at batch {t['batch']} (spin "
                     f"{'on' if t['spin'] else 'off'}, {t['tiles_per_s']} tiles/s); concurrency-1 latency "
                     f"best with {lat['layout']} ({lat['single_c1_median_ms']} ms).")
    parts += ["", _table(["model", "layout", "spin", *[f"tiles/s, batch {b}" for b in batches],
                          "c1 latency ms"], rows), ""]
    return parts


def codecs_section(r: dict[str, Any]) -> list[str]:
    cod = r.get("codecs") or {}
    if not cod.get("rows"):
        return []
    dec = [[x["format"], x["size"], x["codec"], x["median_ms"], f"{x['vs_reference']:.2f}x",
            x["max_abs_diff_vs_pillow"], x.get("gil_gap_ms")] for x in cod["rows"] if x["kind"] == "decode"]
    enc = [[x["format"], x["size"], x["codec"], x["median_ms"], f"{x['vs_reference']:.2f}x", x["output_kib"]]
           for x in cod["rows"] if x["kind"] == "encode"]
    return ["## Image codecs on one core (codecs.md)", "",
            f"Median ms of {cod['settings']['runs']} interleaved rounds per input, pinned to one core.", "",
            _table(["format", "size", "decoder", "ms", "vs Pillow", "max diff vs Pillow", "GIL gap ms"], dec),
            "",
            _table(["output", "size", "encoder", "ms", "vs paletted PNG", "KiB"], enc), ""]


def _machines(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(when, machine) of the first run and of each merged run that recorded its machine (the latest
    merges: earlier ones kept none)."""
    merged_at, machines = r.get("merged", []), r.get("merged_machines", [])
    pairs = zip(merged_at[len(merged_at) - len(machines):], machines, strict=True)
    return [(f"first {r['started']}", r["machine"]), *((f"merged {at}", m) for at, m in pairs)]


def markdown(r: dict[str, Any], out: Path) -> str:
    m = r["machine"]
    parts = [f"# Benchmark results ({r['started']} - {r.get('finished', '?')})", "",
             f"Model `{r['model']}`, image `{r['image']}`, {r['duration_s']:g} s per load point; service "
             f"settings {r['service_env'] or 'defaults'}. Load average at start {m['loadavg_at_start']}, "
             f"at end {r.get('loadavg_at_end')}: a shared, noisy 2-core machine."
             + (f" Parts re-run and merged in at {', '.join(r['merged'])}." if r.get("merged") else ""), "",
             _table(["run", "cpu", "mem", "python", "onnxruntime", "torch", "numpy", "opencv", "fastapi",
                     "commit"],
                    [[when, mm["cpu"].get("Model name"), f"{mm['mem_gib']} GiB", mm["python"],
                      mm["onnxruntime"], mm["torch"], mm["numpy"], mm["opencv"], mm["fastapi"],
                      mm["git_commit"]]
                     for when, mm in _machines(r)]), "",
             "## Targets", "",
             _table(["target", "measured", "ratio", "met"],
                    [[t, v, ratio, "yes" if ok else "NO"] for t, v, ratio, ok in targets(r)]), ""]
    if "ort_limit" in r:
        o = r["ort_limit"]
        parts += ["## Baseline 1: raw ONNX Runtime", "",
                  _table(["batch", "ORT spinning", "tiles/s", "median run ms", "ms/tile", "runs"],
                         [[s["batch"], "on" if s.get("spin", True) else "off", s["tiles_per_s"],
                           s["median_run_ms"], s["median_ms_per_tile"], s["runs"]] for s in o["sweep"]]), ""]
    if "service" in r:
        rows = []
        for c, rep in r["service"].items():
            naive = _get(r, "naive", c) or {}
            lat, nlat = rep["latency_ms"], naive.get("latency_ms") or {}
            passes = _get(r, "service_runs", c) or []
            spread = " / ".join(str(x["throughput_rps"]) for x in passes) if len(passes) > 1 else "-"
            p99s = " / ".join(str(x["latency_ms"]["p99"]) for x in passes) if len(passes) > 1 else "-"
            rows.append([c, rep["throughput_rps"], spread, lat["p50"], lat["p90"], lat["p99"], p99s,
                         sum(rep["errors"].values()), _batches(rep), rep.get("foreign_cores"),
                         naive.get("throughput_rps"), nlat.get("p50"), nlat.get("p99"),
                         sum((naive.get("errors") or {}).values()) if naive else None])
        parts += ["## Service vs naive server (closed loop, mode=whole, output=color)", "",
                  f"{r.get('repeats', 1)} pass(es) over the concurrencies, interleaved; each row is the pass "
                  "of median throughput.", "",
                  _table(["conc.", "req/s", "req/s, all passes", "p50 ms", "p90 ms", "p99 ms",
                          "p99, all passes", "errors", "mean batch (sizes)",
                          "others' cores", "naive req/s", "naive p50", "naive p99", "naive errors"],
                         rows), "",
                  "\"others' cores\": CPU used on the machine during the run by processes other than the "
                  "server and the load generator, in cores (of 2).", "",
                  "![throughput and p99 against concurrency](plot.png)", ""]
        mp = r.get("service_multipart_c8")
        if mp:
            parts += [f"Service at concurrency 8 with a multipart upload (the naive server's request "
                      f"shape): {mp['throughput_rps']} req/s, p99 {mp['latency_ms']['p99']} ms.", ""]
        stages = ["decode", "plan", "batch", "stitch", "encode", "inference_per_batch"]
        srows = [[c, *[_get(rep, "server_stage_mean_ms", s) for s in stages],
                  *[_get(rep, "server_timing_median_ms", s) for s in stages[:5]]]
                 for c, rep in r["service"].items()]
        parts += ["## Per-request time breakdown (ms)", "",
                  "Means from `pspnet_stage_duration_seconds` (batch = queue + inference; inference per "
                  "batch from `pspnet_inference_duration_seconds`), then medians of the Server-Timing "
                  "header.",
                  "", _table(["conc.", "decode", "plan", "batch", "stitch", "encode", "inference/batch",
                              "p50 decode", "p50 plan", "p50 batch", "p50 stitch", "p50 encode"], srows), ""]
    if (r.get("int8") or {}).get("service"):
        i8 = r["int8"]
        o = i8.get("ort_limit") or {}
        parts += [f"## int8 artifact (`{i8['model']}`, `pspnet-model quantize`)", "",
                  "Raw ONNX Runtime:", "",
                  _table(["batch", "ORT spinning", "tiles/s", "median run ms", "ms/tile", "runs"],
                         [[s["batch"], "on" if s.get("spin", True) else "off", s["tiles_per_s"],
                           s["median_run_ms"], s["median_ms_per_tile"], s["runs"]]
                          for s in o.get("sweep", [])]),
                  "", "Service on the int8 artifact (closed loop, mode=whole, output=color):", "",
                  _table(["conc.", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "mean batch (sizes)",
                          "others' cores", "decode", "batch", "stitch", "encode"],
                         [[c, rep["throughput_rps"], rep["latency_ms"]["p50"], rep["latency_ms"]["p90"],
                           rep["latency_ms"]["p99"], sum(rep["errors"].values()), _batches(rep),
                           rep.get("foreign_cores"),
                           *[_get(rep, "server_stage_mean_ms", st) for st in ("decode", "batch", "stitch",
                                                                                "encode")]]
                          for c, rep in i8["service"].items()]), ""]
        pr = i8.get("protocol")
        if pr:
            parts += ["Protocol path on the int8 artifact (1024x2048):", "",
                      _table(["mode", "tiles", "reference s", "ours s (best)", "speed-up", "labels agree"],
                             [[k, v["tiles"], v["reference_s"], v["ours_s"], f"{v['speedup']}x",
                               f"{v['label_agreement']:.4%}"] for k, v in pr["modes"].items()]), ""]
    cpu_rows = []
    for label, rep in [*((f"service c={c}", v) for c, v in (r.get("service") or {}).items()),
                       *((f"naive c={c}", v) for c, v in (r.get("naive") or {}).items())]:
        cpu = rep.get("cpu_ms_per_ok") or {}
        if cpu.get("server"):
            total = cpu["server"] + (cpu.get("client") or 0)
            groups = rep.get("server_cpu_ms_per_ok_by_thread") or {}
            cpu_rows.append([label, cpu["server"], cpu.get("client"), round(2000 / total, 2),
                             "; ".join(f"{k} {v}" for k, v in groups.items())])
    if cpu_rows:
        parts += ["## CPU per answered request (ms of CPU time, from /proc)", "",
                  "Two cores give 2000 ms of CPU per second, so 2000 / (server + client) is the most "
                  "requests per second this work could ever reach on this machine.", "",
                  _table(["run", "server", "load generator", "2-core bound req/s", "server by thread"],
                         cpu_rows), ""]
    if r.get("profile_file") and (out / r["profile_file"]).exists():
        prof = profile_summary(out / r["profile_file"])
        r["profile"] = prof
        parts += ["## Profile (py-spy, service at concurrency 8, all threads)", "",
                  f"{prof['samples']} samples of active threads.", "",
                  _table(["where", "share of samples"],
                         [[k, f"{v:.1%}"] for k, v in prof["categories"].items()]), "",
                  _table(["leaf frame", "share"], [[f"`{k}`", f"{v:.1%}"] for k, v in prof["top_leaves"]]),
                  ""]
    if r.get("tuning"):
        parts += ["## Settings", "",
                  _table(["settings", "conc.", "req/s", "p50 ms", "p99 ms", "mean batch", "errors",
                          "CPU ms/req", "others' cores"],
                         [[", ".join(f"{k}={v}" for k, v in t["settings"].items()) or "defaults",
                           t.get("concurrency", 8), t["throughput_rps"], t["latency_ms"]["p50"],
                           t["latency_ms"]["p99"],
                           _get(t, "batches", "mean_tiles"), sum(t["errors"].values()),
                           _get(t, "cpu_ms_per_ok", "server"), t.get("foreign_cores")]
                          for t in r["tuning"]]), ""]
    if "protocol" in r:
        p = r["protocol"]
        parts += [f"## Baseline 3: official protocol, PyTorch eager vs engine path "
                  f"({p['size'][0]}x{p['size'][1]}, base size {p['base_size']}, "
                  f"tile {p['tile'][0]}x{p['tile'][1]}, flip {p['flip']})", "",
                  _table(["mode", "tiles", "reference s (its network calls)", "ours, ORT spin off",
                          "ours, ORT spin on", "speed-up (best)", "ours plan/run/stitch s (best)",
                          "labels agree"],
                         [[k, v["tiles"], f"{v['reference_s']} ({v.get('reference_net_s', '-')})",
                           v.get("ours_no_spin_s", v["ours_s"]), v.get("ours_spin_s"), f"{v['speedup']}x",
                           " / ".join(str(x) for x in v["ours_split_s"].values()),
                           f"{v['label_agreement']:.4%}"] for k, v in p["modes"].items()]), ""]
    parts += litserve_section(r) + layout_section(r) + codecs_section(r)
    if "rss_run" in r and r["rss_run"].get("rss"):
        rr = r["rss_run"]
        parts += ["## Memory under load", "",
                  f"{rr['load']['duration_s']:g} s at concurrency 8: {rr['ok']} requests, "
                  f"{rr['throughput_rps']} req/s, p99 {rr['latency_ms']['p99']} ms; RSS start "
                  f"{rr['rss']['start_mib']} MiB, end {rr['rss']['end_mib']}, min {rr['rss']['min_mib']}, "
                  f"max {rr['rss']['max_mib']}.", "", "![RSS during the load run](rss.png)", ""]
    return "\n".join(parts)


def plots(r: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "service" in r:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for key, label, style in (("service", "pspnet-serve (ONNX Runtime, batching)", "o-"),
                                  ("naive", "naive FastAPI + PyTorch eager", "s--"),
                                  ("int8", "pspnet-serve, int8 artifact", "^-")):
            series = (r.get(key) or {}) if key != "int8" else _get(r, "int8", "service") or {}
            cs = [int(c) for c in series]
            ax1.plot(cs, [series[str(c)]["throughput_rps"] for c in cs], style, label=label)
            ax2.plot(cs, [series[str(c)]["latency_ms"]["p99"] for c in cs], style, label=label)
        limit = _get(r, "ort_limit", "limit_tiles_per_s")
        if limit:
            ax1.axhline(limit, color="grey", ls=":", label="raw ONNX Runtime limit (float32)")
            ax1.axhline(0.9 * limit, color="grey", ls="-.", lw=0.8, label="90% of that limit")
        single = _get(r, "ort_limit", "single_image_ms")
        if single:
            ax2.axhline(single, color="grey", ls=":", label="single-image inference (float32)")
        limit8 = _get(r, "int8", "ort_limit", "limit_tiles_per_s")
        if limit8:
            ax1.axhline(limit8, color="tab:green", ls=":", label="raw ONNX Runtime limit (int8)")
        single8 = _get(r, "int8", "ort_limit", "single_image_ms")
        if single8:
            ax2.axhline(single8, color="tab:green", ls=":", label="single-image inference (int8)")
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(map(int, r["service"])), labels=list(r["service"]))
            ax.set_xlabel("concurrency (closed loop)")
            ax.grid(alpha=0.3)
        ax1.set_ylabel("requests / s")
        ax1.set_ylim(bottom=0)
        ax2.set_ylabel("p99 latency, ms")
        ax2.set_yscale("log")
        ax1.legend(fontsize=8)
        ax2.legend(fontsize=8)
        fig.suptitle(f"{r['model']} (and int8), 360x480 image, mode=whole, output=color (2-core CPU, shared)"
                     if _get(r, "int8", "service") else
                     f"{r['model']}, 360x480 image, mode=whole, output=color (2-core CPU, shared)")
        fig.tight_layout()
        fig.savefig(out / "plot.png", dpi=110)
        plt.close(fig)
    series = _get(r, "rss_run", "rss", "series")
    if series:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot([t for t, _ in series], [m for _, m in series])
        ax.set_xlabel("seconds of load")
        ax.set_ylabel("server RSS, MiB")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "rss.png", dpi=110)
        plt.close(fig)


def render(results: dict[str, Any], out: Path) -> None:
    text = markdown(results, out)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")  # now with the profile summary
    plots(results, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("results", type=Path)
    args = p.parse_args(argv)
    render(json.loads(args.results.read_text()), args.results.parent)
    print((args.results.parent / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
