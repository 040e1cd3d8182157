"""Download progress: the throttle (the first value at once, then at most one every half second
and only after 1 % more while chunks come, the latest sent once the server stalls, the last at
the end) and the cache's downloads heard through it, by the request that downloads
and by one that waits on it, against a slow real HTTP server on loopback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from handler.config import Settings
from handler.models.cache import ModelCache
from handler.models.progress import STAGE, DownloadProgress, Meter
from handler.models.refs import ModelRef
from tests.fixtures.modelserver import ModelServer
from tests.fixtures.sections import sections
from tests.fixtures.waiting import wait_until

LOCAL = Settings(url_allowlist=("127.0.0.1",))


def meter(interval_s: float = 0.5) -> tuple[Meter, list[DownloadProgress]]:
    heard: list[DownloadProgress] = []
    m = Meter(file="m.safetensors", folder="loras", source="https://h.example/m.safetensors", interval_s=interval_s)
    m.listen(heard.append)
    return m, heard


def test_updates_are_throttled_not_sent_per_chunk() -> None:
    m, heard = meter()
    for done in range(0, 1_000_001, 1000):  # a thousand chunks at once
        m.update(done, 1_000_000)
    assert [p.bytes_done for p in heard] == [0]
    m.finish()
    assert [p.bytes_done for p in heard] == [0, 1_000_000]
    assert heard[-1].to_dict() == {
        "stage": STAGE,
        "file": "m.safetensors",
        "folder": "loras",
        "source": "https://h.example/m.safetensors",
        "bytes_done": 1_000_000,
        "bytes_total": 1_000_000,
        "percent": 100.0,
        "model": 1,
        "models": 1,
    }
    m.update(5, 5)
    assert len(heard) == 2  # nothing after the end


def test_a_stalled_download_still_shows_where_it_stopped() -> None:
    m, heard = meter(interval_s=0.2)
    m.update(0, 100)
    m.update(40, 100)  # within the interval: held back, then sent when it ends
    wait_until(lambda: len(heard) == 2, timeout_s=5)
    assert heard[-1].bytes_done == 40 and heard[-1].percent == 40.0
    time.sleep(0.3)
    m.update(40, 100)  # no change: no news
    assert len(heard) == 2
    m.update(40, 10_000)
    wait_until(lambda: len(heard) == 3, timeout_s=5)
    m.update(45, 10_000)  # under 1 % more, and then nothing: sent once the server is seen stalled
    wait_until(lambda: heard[-1].bytes_done == 45, timeout_s=5)


def test_less_than_one_percent_more_is_not_news_while_chunks_come() -> None:
    m, heard = meter(interval_s=0.2)
    m.update(0, 10_000)
    for done in range(1, 31):  # 0.3 % in 0.3 s, a chunk every 10 ms: flowing, but no news
        time.sleep(0.01)
        m.update(done, 10_000)
    assert len(heard) == 1
    m.update(150, 10_000)  # 1.5 %: news, at the end of the interval under way
    wait_until(lambda: [p.bytes_done for p in heard] == [0, 150], timeout_s=2)
    unknown, heard_unknown = meter(interval_s=0.05)
    unknown.update(10, None)
    time.sleep(0.1)
    unknown.update(11, None)  # no total: any growth is news
    assert [(p.bytes_done, p.percent) for p in heard_unknown] == [(10, None), (11, None)]


def test_the_downloader_and_a_waiter_hear_the_download(tmp_path: Path, model_server: ModelServer) -> None:
    data = bytes(64 * 30)  # `slow`: 64 bytes every 50 ms, 1.5 s in all
    model_server.files["s.safetensors"] = data
    cache = ModelCache(root=tmp_path, budget_bytes=1 << 20, **sections(LOCAL, "urls", "jobs", "cloud", "models"))
    r = ModelRef(url=model_server.url("slow", "s.safetensors"), folder="loras", filename="s.safetensors", sha256=None)
    leader: list[DownloadProgress] = []
    waiter: list[DownloadProgress] = []
    started = time.monotonic()
    first = threading.Thread(target=lambda: cache.acquire(r, deadline=time.monotonic() + 30, progress=leader.append))
    first.start()
    wait_until(lambda: len(leader) >= 1, timeout_s=10)
    cache.acquire(r, deadline=time.monotonic() + 30, progress=waiter.append)
    first.join(10)
    took = time.monotonic() - started
    done = [p.bytes_done for p in leader]
    assert done == sorted(done) and done[-1] == len(data) and leader[-1].percent == 100.0
    assert all(p.bytes_total == len(data) and p.file == "s.safetensors" for p in leader)
    assert 3 <= len(leader) <= took / 0.5 + 2, done  # 30 chunks: throttled, yet seen moving
    assert waiter and waiter[-1].bytes_done == len(data)
