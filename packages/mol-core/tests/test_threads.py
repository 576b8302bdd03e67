"""mol_core.threads: the CPUs a process may use, and the flag > MOL_THREADS > CPUs rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mol_core.errors import ConfigError
from mol_core.threads import available_cpus, cgroup_cpu_limit, limit_tokenizer_threads, resolve_threads


@pytest.mark.parametrize(("text", "want"), [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1)])
def test_cgroup_v2_quota_rounds_up(tmp_path: Path, text: str, want: int | None) -> None:
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert cgroup_cpu_limit(tmp_path) == want


def test_resolve_threads_takes_the_flag_then_the_environment_then_the_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MOL_THREADS", raising=False)
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    assert resolve_threads() == resolve_threads(0) == available_cpus()
    assert resolve_threads(processes=4 * available_cpus()) == 1  # at least one thread per process
    assert resolve_threads(5) == 5
    monkeypatch.setenv("MOL_THREADS", "3")
    assert resolve_threads() == 3
    assert resolve_threads(None) == 3
    assert resolve_threads(2) == 2
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("MOL_THREADS", bad)
        with pytest.raises(ConfigError, match="MOL_THREADS must be a positive integer"):
            resolve_threads()
    with pytest.raises(ConfigError, match="threads must be >= 0"):
        resolve_threads(-1)


_RAYON_PROBE = """
import re, sys
from mol_core.threads import limit_tokenizer_threads
from tokenizers import Tokenizer, models, pre_tokenizers
limit_tokenizer_threads(int(sys.argv[1]))
def threads():
    return int(re.search(r"Threads:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
before = threads()
tokenizer.encode_batch(["a a a"] * 2000)
print(threads() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="counts threads through /proc")
def test_limit_tokenizer_threads_sizes_the_tokenizers_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tokenizers")
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")

    def started(threads: int) -> int:
        probe = subprocess.run(
            [sys.executable, "-c", _RAYON_PROBE, str(threads)], capture_output=True, text=True, check=True
        )
        return int(probe.stdout.strip())

    assert started(1) <= 1
    assert started(5) >= 5  # rayon starts as many as asked, whatever the machine's CPU count


def test_limit_tokenizer_threads_keeps_a_setting_of_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYON_NUM_THREADS", "3")
    limit_tokenizer_threads(1)
    assert os.environ["RAYON_NUM_THREADS"] == "3"
    monkeypatch.delenv("RAYON_NUM_THREADS")
    limit_tokenizer_threads(2)
    assert os.environ["RAYON_NUM_THREADS"] == "2"
