"""Each process's share of the global caps when nothing global holds them (no coordination)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError
from server.processes import share, split
from tests.support.app import make_config


@pytest.mark.parametrize("total", [1, 2, 3, 7, 64, 100, 101])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_the_parts_add_up_to_the_whole_and_differ_by_at_most_one(total: int,
                                                                 count: int) -> None:
    if total < count:
        return
    parts = [split(total, i, count) for i in range(count)]
    assert sum(parts) == total
    assert max(parts) - min(parts) <= 1 and min(parts) >= 1
    assert parts == sorted(parts, reverse=True)  # the remainder goes to the first ones


def test_workers_replica_caps_and_the_upstream_rate_are_shared(tmp_path: Path) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9/v1", queue={"workers": 10},
                         limits={"upstream_rps": 100},
                         models=[{"name": "m", "replicas": [
                             {"url": "http://127.0.0.1:9/v1", "max_concurrency": 7},
                             {"url": "http://127.0.0.1:8/v1"}]}])
    shares = [share(config, i, 3) for i in range(3)]
    assert [c.queue.workers for c in shares] == [4, 3, 3]
    assert [c.models[0].replicas[0].max_concurrency for c in shares] == [3, 2, 2]
    assert {c.models[0].replicas[1].max_concurrency for c in shares} == {0}  # no cap: none
    assert sum(c.limits.upstream_rps for c in shares) == pytest.approx(100)
    assert shares[0].queue.max_size == config.queue.max_size  # per process, not a share
    assert share(config, 0, 1) is config


def test_a_cap_too_small_to_share_is_a_configuration_error(tmp_path: Path) -> None:
    few = make_config(tmp_path, "http://127.0.0.1:9/v1", queue={"workers": 2})
    with pytest.raises(ConfigError, match="queue.workers"):
        share(few, 0, 3)
    tight = make_config(tmp_path, "http://127.0.0.1:9/v1", models=[
        {"name": "m", "replicas": [{"url": "http://127.0.0.1:9/v1", "max_concurrency": 1}]}])
    with pytest.raises(ConfigError, match="max_concurrency"):
        share(tight, 0, 2)
