"""``pspnet-serve segment --ray`` on a local Ray cluster (one per module) with the tiny model.

Needs the ``ray`` extra, which the README's test command installs: these tests never skip.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest

from service.cli import main
from service.offline.inputs import expand_inputs, read_input
from service.offline.on_ray import RayOptions, actor_threads, connect
from tests.service.api_client import png_bytes
from tests.service.bulk_files import outputs, tree
from tests.service.tiny_model import build_tiny_artifact

CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\0" * 40
# Ray Data reads its own deprecated settings when it copies its context: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    # imported here, not at collection: Ray's import-time set-up stays out of the other modules' tests
    import ray

    # two CPUs: two workers of half a CPU each leave one for reading and decoding
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()




def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def segment(*args: str) -> int:
    return main(["segment", *args])


@pytest.mark.parametrize("output", ["label", "overlay"])
def test_ray_writes_the_plain_commands_bytes(model: Path, tmp_path: Path, output: str) -> None:
    # one-tile and several-tile images, two with one file name in different folders, two workers
    src = tree(tmp_path / "in", {f"a/{i}.png": png_bytes(30 + 7 * i, 40 + 9 * i, seed=i) for i in range(5)}
               | {"a/x.png": png_bytes(32, 48, seed=10), "b/x.png": png_bytes(50, 70, seed=11),
                  "b/c/y.png": png_bytes(90, 60, seed=12)})
    common = ["--model", str(model), "--output", output, "--max-batch", "3"]
    assert segment(str(src), "--out", str(tmp_path / "plain"), *common) == 0
    assert segment(str(src), "--out", str(tmp_path / "ray"), *common, "--ray", "--num-workers", "2",
                   "--cpus-per-worker", "0.5") == 0
    plain, on_ray = outputs(tmp_path / "plain"), outputs(tmp_path / "ray")
    suffix = ".png" if output == "label" else ".jpg"
    assert sorted(on_ray) == sorted([f"a/{i}{suffix}" for i in range(5)] + [f"a/x{suffix}", f"b/x{suffix}",
                                                                               f"b/c/y{suffix}"])
    assert on_ray == plain  # byte for byte
    assert on_ray[f"a/x{suffix}"] != on_ray[f"b/x{suffix}"]  # both survived

    def strip(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]

    assert strip(manifest(tmp_path / "ray")) == strip(manifest(tmp_path / "plain"))


def test_ray_workers_write_results_of_the_usual_mode(model: Path, tmp_path: Path) -> None:
    # the workers write through atomic_write as the plain command does: 0666 less the umask, which
    # they inherited from this process when the cluster started (0644 under the usual 022), not 0600
    umask = os.umask(0o022)
    os.umask(umask)
    src = tree(tmp_path / "in", {"a.png": png_bytes(30, 40, seed=1), "b/c.png": png_bytes(30, 40, seed=2)})
    out = tmp_path / "out"
    assert segment(str(src), "--out", str(out), "--model", str(model), "--ray",
                   "--cpus-per-worker", "0.5") == 0
    modes = {n: stat.S_IMODE((out / n).stat().st_mode) for n in ["a.png", "b/c.png", "manifest.jsonl"]}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_ray_records_bad_inputs_and_a_rerun_skips_what_is_done(model: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    src = tree(tmp_path / "in", {"good/1.png": png_bytes(30, 40, seed=1),
                                 "good/2.png": png_bytes(40, 30, seed=2), "bad/corrupt.png": CORRUPT,
                                 "bad/huge.png": png_bytes(60, 80, seed=3)})
    out = tmp_path / "out"
    # one worker of one CPU: Ray Data runs reading and decoding inside the actor (fused stages)
    args = [str(src), "--out", str(out), "--model", str(model), "--max-pixels", "3000", "--ray"]
    assert segment(*args) == 1
    err = capsys.readouterr().err
    assert f"failed: {src / 'bad' / 'corrupt.png'}" in err and f"failed: {src / 'bad' / 'huge.png'}" in err
    by_input = {r["input"]: r for r in manifest(out)}
    corrupt, huge = by_input[str(src / "bad/corrupt.png")], by_input[str(src / "bad/huge.png")]
    assert corrupt["status"] == huge["status"] == "error" and corrupt["output"] is huge["output"] is None
    assert "limit is 3000" in huge["error"] and (huge["width"], huge["height"]) == (80, 60)
    assert [by_input[str(src / f"good/{i}.png")]["status"] for i in (1, 2)] == ["ok", "ok"]
    assert sorted(outputs(out)) == ["good/1.png", "good/2.png"]
    before = {n: (out / n).stat().st_mtime_ns for n in outputs(out)}

    time.sleep(0.01)
    assert segment(*args) == 1  # the bad ones fail again; the good ones are not redone
    statuses = {r["input"].removeprefix(str(src) + "/"): r["status"] for r in manifest(out)}
    assert statuses == {"bad/corrupt.png": "error", "bad/huge.png": "error", "good/1.png": "skipped",
                        "good/2.png": "skipped"}
    assert {n: (out / n).stat().st_mtime_ns for n in outputs(out)} == before


def test_uri_inputs_are_read_by_the_pipeline(model: Path, tmp_path: Path) -> None:
    # file:// stands for s3:// and gs:// here: the same pyarrow filesystems, no credentials needed
    src = tree(tmp_path / "in", {"p/a.png": png_bytes(30, 40, seed=1), "p/q/b.png": png_bytes(30, 40, seed=2),
                                 "p/q/notes.txt": b"-"})
    uri = (src / "p").as_uri()
    inputs = expand_inputs([uri])
    assert [(i.source, str(i.rel)) for i in inputs] == [(f"{uri}/a.png", "a.png"),
                                                        (f"{uri}/q/b.png", "q/b.png")]
    assert read_input(inputs[0].location) == (src / "p/a.png").read_bytes()
    assert segment(uri, "--out", str(tmp_path / "out"), "--model", str(model), "--ray",
                   "--cpus-per-worker", "0.5") == 0
    assert segment(str(src / "p"), "--out", str(tmp_path / "plain"), "--model", str(model)) == 0
    assert outputs(tmp_path / "out") == outputs(tmp_path / "plain")


def test_each_actor_runs_as_many_threads_as_cpus_it_reserved() -> None:
    assert [actor_threads(0, c) for c in (0.5, 1, 2.5, 8)] == [1, 1, 2, 8]
    assert actor_threads(3, 8) == 3  # --threads wins


def test_a_pipeline_that_dies_records_every_input_and_fails(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # the metadata reads well (the driver plans the run), the graph does not load (the actors die)
    model = build_tiny_artifact(tmp_path / "broken.onnx")
    graph = onnx.load(str(model))
    graph.graph.node[2].op_type = "NoSuchOp"
    onnx.save(graph, str(model))
    src = tree(tmp_path / "in", {"a.png": png_bytes(30, 40, seed=1), "b.png": png_bytes(30, 40, seed=2)})
    out = tmp_path / "out"
    assert segment(str(src), "--out", str(out), "--model", str(model), "--ray") == 1
    assert "the run stopped: " in capsys.readouterr().err
    lines = manifest(out)
    assert [(r["input"], r["status"]) for r in lines] == [(str(src / "a.png"), "error"),
                                                          (str(src / "b.png"), "error")]
    assert all(r["error"].startswith("the run stopped: ") and "\x1b" not in r["error"] for r in lines)


class FakeRay:
    def __init__(self, initialized: bool = False) -> None:
        self.initialized = initialized
        self.calls: list[dict[str, Any]] = []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


def test_the_cluster_is_the_flag_then_ray_address_then_a_local_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "ray-head:6379")
    fake = FakeRay()
    assert connect(fake, RayOptions(address="other:6379")) and fake.calls[-1]["address"] == "other:6379"
    assert connect(fake, RayOptions()) and fake.calls[-1]["address"] == "ray-head:6379"
    assert "num_cpus" not in fake.calls[-1]  # a cluster that exists has its own resources
    monkeypatch.delenv("RAY_ADDRESS")
    assert connect(fake, RayOptions(num_workers=3, cpus_per_worker=2))
    assert fake.calls[-1]["address"] == "local" and fake.calls[-1]["num_cpus"] >= 7  # one CPU to spare
    connected = FakeRay(initialized=True)
    assert not connect(connected, RayOptions(address="x:1")) and connected.calls == []  # used as it is
