"""The benchmarks in smoke mode (tiny sizes), so that they never rot. Counts only, never
timings: the full run (``python -m benchmarks``) is what measures."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from benchmarks import hit_instructions, hit_path, run

OURS = "asyncpromptcache AsyncPromptClient"


def test_hit_path_quick_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert hit_path.main(["--quick"]) == 0
    assert "ours / floor" in capsys.readouterr().out


def test_smoke_run_writes_every_result(tmp_path: Path) -> None:
    assert run.main(["--smoke", "--out", str(tmp_path)]) == 0

    document = json.loads((tmp_path / "latest.json").read_text())
    markdown = (tmp_path / "latest.md").read_text()
    assert document["meta"]["smoke"] is True
    assert document["meta"]["machine"]["python"]
    scenarios = document["scenarios"]
    assert set(scenarios) == {
        "hit_async", "hit_instructions", "hit_sync", "stampede", "refresh", "outage", "web_app",
        "memory", "sync_threads", "shared", "response_stream", "propagation",
    }
    for scenario in scenarios.values():
        assert scenario["title"] in markdown

    # Single-flight: one upstream request per cold key, however many callers.
    cases = scenarios["stampede"]["data"]["cases"]
    one_key, many_keys = cases["1 key"], cases["5 keys"]
    assert [r["upstream_requests"] for r in one_key[OURS]["runs"]] == [1]
    assert [r["upstream_requests"] for r in many_keys[OURS]["runs"]] == [5]
    assert [r["errors"] for r in one_key[OURS]["runs"]] == [0]
    assert [r["upstream_requests"] for r in one_key["async_lru @alru_cache(ttl=)"]["runs"]] == [1]

    # Every hit timed was a hit.
    assert scenarios["hit_async"]["data"]["upstream_requests_while_timing"] == 0
    assert scenarios["hit_sync"]["data"]["upstream_requests_while_timing"] == 0

    # Cached keys through the outage: no caller saw an error or was left waiting.
    ours_outage = scenarios["outage"]["data"]["peers"][OURS]
    for phase in ("503", "hang"):
        assert ours_outage[phase]["n"] > 0
        assert ours_outage[phase]["errors"] == 0
        assert ours_outage[phase]["unfinished"] == 0
    assert scenarios["refresh"]["data"]["peers"][OURS]["runs"][0]["window_errors"] == 0

    web = scenarios["web_app"]["data"]["peers"][OURS]["runs"][0]
    assert web["failed"] == 0 and web["upstream_requests"] == 5

    # The shared tier: one request per prompt for the fleet, no error while Redis was killed.
    shared = scenarios["shared"]["data"]
    tier = shared["requests"]["asyncpromptcache + RedisTier"]
    assert tier["cold_requests"] == shared["sizes"]["prompts"]
    assert tier["ttl_window_requests"] == shared["sizes"]["prompts"]
    assert tier["errors"] == 0
    assert shared["invalidation_ms"]["missed"] == 0
    assert shared["redis_killed"]["caller_errors_while_down"] == 0
    assert shared["redis_killed"]["requests_for_a_new_prompt_after_restart"] == 1
    # The same under real conditions: the machine loaded, Redis restarted mid-load.
    assert shared["loaded_cold_start"]["requests"] == shared["sizes"]["prompts"]
    assert shared["loaded_cold_start"]["errors"] == 0
    restart = shared["restart_mid_load"]
    assert restart["requests_per_round"] == [1] * shared["sizes"]["restart_rounds"]
    assert restart["caller_errors_during"] == restart["caller_errors_after"] == 0

    # A label moved on the server reaches every worker, from Redis: no upstream GET for it.
    moves = scenarios["propagation"]["data"]
    hook = moves["webhook"]
    assert hook["every_worker_ms"]["n"] == moves["sizes"]["moves"]
    assert hook["missed"] == 0 and hook["webhooks_not_applied"] == 0
    assert hook["upstream_gets_for_new_versions"] == 0
    assert moves["ttl_only"]["missed"] == 0

    memory = scenarios["memory"]["data"]
    assert memory["per_entry"][OURS]["entries"] == 2000
    assert len(memory["rss_bytes"][OURS]) == 5  # a sample at the start and every 2,500 calls

    # Instructions per hit under callgrind, or a note saying valgrind is missing.
    instructions = scenarios["hit_instructions"]["data"]
    if shutil.which("valgrind") is None:
        assert "valgrind" in instructions["skipped"]
    else:
        assert set(instructions["x_floor"]) >= {
            hit_instructions.FLOOR, hit_instructions.OURS, hit_instructions.LABEL,
            hit_instructions.VERSION,
        }
        assert instructions["x_floor"][hit_instructions.FLOOR] == 1.0
        assert all(n > 0 for n in instructions["instructions"].values())
        # The fresh hit's cost, by name, shared tier on or off: a count, not a time.
        assert instructions["x_floor"][hit_instructions.OURS] <= hit_instructions.TARGET
        tiered = instructions["x_floor"].get(hit_instructions.TIERED)
        assert tiered is None or tiered <= hit_instructions.TARGET

    # One upstream stream for 100 identical concurrent streams; every consumer got its chunks.
    response = scenarios["response_stream"]["data"]["peers"]["asyncpromptcache ResponseCache"]
    assert [r["upstream_calls"] for r in response["runs"]] == [1]
    assert [(r["errors"], r["joins"], r["same_chunks_all"]) for r in response["runs"]] == [
        (0, 99, True)]
    assert response["replay"]["upstream_calls"] == 0
    assert response["replay"]["chunk_boundaries_kept"] is True
    # Across processes: one upstream stream for all of them with the shared tier.
    processes = scenarios["response_stream"]["data"]["processes"]
    assert processes["in-process only"]["upstream_streams"] == 2
    assert processes["shared=Redis"]["upstream_streams"] == 1
    assert processes["shared=Redis"]["errors"] == 0 and processes["shared=Redis"]["same_chunks"]

    targets = {t["target"] for t in document["targets"]}
    assert "100 cold callers of 1 key -> exactly 1 upstream request" in targets
    assert "zero caller errors for cached keys through the outage (503, then a hang)" in targets
    assert hit_instructions.target(instructions)["target"] in targets

    if importlib.util.find_spec("matplotlib") is not None:
        charts = sorted(p.name for p in tmp_path.glob("*.png"))
        assert charts == [
            "hit_cost.png", "memory.png", "outage.png", "refresh_window.png",
            "stampede_and_web_app.png", "sync_threads.png",
        ]


def test_hit_instructions_skips_itself_without_valgrind(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    data = hit_instructions.measure(10)
    assert "valgrind is not installed" in data["skipped"]
    assert hit_instructions.target(data)["met"] is None
    hit_instructions.report(data)
    assert "valgrind is not installed" in capsys.readouterr().out
