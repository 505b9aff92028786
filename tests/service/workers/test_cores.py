"""How many workers ``auto`` means, and the cores a cgroup quota allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings
from service.workers.cores import MAX_AUTO_WORKERS, allowed_cores, cgroup_cpus, resolve_workers


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpus(tmp_path) == 2.5
    assert allowed_cores(tmp_path) <= 3  # rounded up, and never above the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(tmp_path) == 1.0
    assert allowed_cores(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpus(tmp_path) is None


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpus(tmp_path) is None
    assert allowed_cores(tmp_path) >= 1


@pytest.mark.parametrize(("workers", "provider", "cuda", "cores", "want"), [
    ("auto", "auto", False, 16, 1),  # CPU: one process, ORT's threads use the cores
    ("auto", "cpu", True, 16, 1),
    ("auto", "auto", True, 8, 8),  # CUDA: the cores this process may use
    ("auto", "cuda", True, 64, MAX_AUTO_WORKERS),
    ("3", "cpu", False, 2, 3),  # a number is taken as it is
])
def test_resolve_workers(workers: str, provider: str, cuda: bool, cores: int, want: int) -> None:
    settings = Settings(workers=workers, provider=provider)
    assert resolve_workers(settings, cuda=cuda, cores=cores) == want


def test_workers_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        Settings(workers=0)
