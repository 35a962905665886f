"""`make bench` cannot rot: its pure functions, and one tiny run against a live server."""

import json

import httpx
import pytest

from harness.server import run_in_fresh_loop
from harness.sse import Event
from tools.bench import clients, options, report, runner, scenarios, stats


def result(status=200, events=(), transport_error=None, headers=None, body=None) -> clients.ChatResult:
    """A chat as the bench's clients record it: events with arrival times, the body, the headers."""
    if headers is None:
        headers = {"content-type": "text/event-stream; charset=utf-8"} if status == 200 else {}
    stream = clients.ChatResult(status=status, headers=httpx.Headers(headers), started=0.0,
                              transport_error=transport_error)
    stream.events = [Event(f"data: {data}", at) for at, data in events]
    stream.body = body if body is not None else b"".join(f"{e.raw}\n\n".encode() for e in stream.events)
    stream.finished = events[-1][0] if events else 0.0
    return stream


BUSY = {"content-type": "application/json", "retry-after": "10"}
REFUSAL = b'{"detail": "the model is busy"}'


TOKENS = [(0.1, '{"token": "", "waiting": 1}'), (0.3, '{"token": "Hi"}'), (0.35, '{"token": " there"}')]
DONE = [(0.4, "[DONE]")]


def test_percentile_interpolates_between_ranks():
    assert stats.percentile([], 50) is None
    assert stats.percentile([7.0], 95) == 7.0
    assert stats.percentile([1, 2, 3, 4], 50) == 2.5
    assert stats.percentile(range(101), 95) == 95
    assert stats.percentile([3, 1, 2], 100) == 3


def test_medians_take_every_number_and_skip_missing_values():
    runs = [{"a": 1.0, "b": None, "ttft": [1]}, {"a": 3.0, "b": 2.0, "ttft": [2]}, {"a": 2.0, "b": None}]
    assert stats.medians(runs) == {"a": 2.0, "b": 2.0}


@pytest.mark.parametrize(
    ("stream", "outcome"),
    [
        (result(events=TOKENS + DONE), "complete"),
        (result(status=503, headers=BUSY, body=REFUSAL), "refused"),
        (result(events=TOKENS + [(0.5, '{"error": {"message": "x", "type": "timeout"}}')] + DONE), "error"),
        (result(events=TOKENS), "cut_off"),
        (result(events=TOKENS, transport_error="RemoteProtocolError: closed"), "cut_off"),
        (result(status=0, transport_error="ConnectionResetError"), "cut_off"),
        (result(events=DONE), "cut_off"),
        (result(status=503, headers={"content-type": "application/json"}, body=REFUSAL), "other"),
        (result(events=[(0.5, '{"error": {"message": "x", "type": "timeout"}}')] + TOKENS + DONE), "other"),
        (result(status=504, headers={"content-type": "application/json"}, body=b"{}"), "other"),
    ],
    ids=["complete", "503", "error-event", "no-done", "transport", "no-response", "no-message",
         "503-without-retry-after", "error-not-last", "504"],
)
def test_outcomes(stream, outcome):
    assert clients.classify(stream) == outcome


def test_a_stream_times_its_first_token_and_gaps():
    stream = result(events=TOKENS + DONE)
    assert stream.first_token_at == 0.3  # the waiting event is not a token
    assert stream.gaps == pytest.approx([0.05])
    summary = scenarios.summarize([stream, result(status=503, headers=BUSY, body=REFUSAL)], solo_duration=0.2)
    assert summary["complete"] == summary["refused"] == 1
    assert summary["slowest_over_solo"] == pytest.approx(2.0)


def test_take_events_keeps_a_partial_event_and_stops_after_tokens():
    stream = result()
    rest = clients.take_events(b'data: {"token": "a"}\n\ndata: {"token": "b"}\n\ndata: {"to', 1.0, stream, 2)
    assert rest == b'data: {"to'
    assert [e.data for e in stream.events] == ['{"token": "a"}', '{"token": "b"}']
    assert stream.dropped


def synthetic_results() -> dict:
    run = {"streams": 32, "complete": 32, "refused": 0, "error": 0, "cut_off": 0, "other": 0,
           "ttft_p50": 0.1, "ttft_p95": 0.14, "ttft_max": 0.15, "slowest_over_solo": 1.1,
           "gap_p50": 0.055, "gap_p95": 0.08, "health_p50": 0.002, "health_p99": 0.012, "pss": 300000,
           "rss": 900000, "sockets_peak": 390, "wall": 4.0, "loop_lag_max": 0.01, "loop_lag_p99": 0.005,
           "client_cpu": 0.5, "cpu_http": 1.2, "cpu_arbiter": 0.5, "cpu_dirty": 1.0, "cpu_master": 0.0}
    burst = {**run, "streams": 128, "complete": 120, "refused": 8}
    config = {"dirty_workers": 32, "label": "32 (shipped)", "shipped": True,
              "idle_after_warm_up": {"sockets": 296}, "solo": {"ttft": 0.06, "duration": 3.4},
              "together": run, "health": {**run, "streams": 64}, "burst": burst,
              "sockets": {"requests": 1000, "concurrency": 64, "outcomes": {"complete": 500, "dropped": 500},
                          "idle": 296, "peak": 400, "after": 296, "sockets_leaked": 0,
                          "seconds_to_idle": 0.1}}
    drop = {"samples": 15, "idle_ttft": 0.06, "after_drop_ttft": 0.12, "after_drop_max": 0.2}
    meta = {"date": "2026-01-01T00:00:00+00:00", "cores": 2, "python": "3.11.7", "gunicorn": "27.0.1",
            "step": "05_browser_ui", "shipped_dirty_workers": 32, "prompt": "explain", "client": "raw",
            "repeat": 3, "together": 32, "burst_factor": 4, "seconds": 500, "command": "make bench"}
    configs = [config, {**config, "dirty_workers": 1, "label": "1", "shipped": False, "drop": drop}]
    return {"meta": meta, "configs": configs, "drop": drop, "targets": runner.evaluate_targets(configs)}


def test_targets_are_judged_from_the_shipped_config():
    verdicts = {row["key"]: row["met"] for row in synthetic_results()["targets"]}
    assert verdicts == {"ttft_p95": True, "slowest_over_solo": True, "pss": True, "health_p99": False,
                        "after_drop_ttft": True, "sockets_leaked": True, "burst_cut_off": True}
    # Nothing measured is "not measured", not a pass.
    assert {row["met"] for row in runner.evaluate_targets([])} == {None}


def test_the_table_says_how_it_was_made_and_what_it_found():
    table = report.render_markdown(synthetic_results())
    first = table.splitlines()[0]
    for fact in ("2026-01-01", "2 cores", "Python 3.11.7", "gunicorn 27.0.1", "`make bench`"):
        assert fact in first
    assert "| /health p99 while 64 streams run | ≤ 10 ms | 12 ms | **no** |" in table
    assert "| 32 (shipped) | 32/32 | 0 | 100 ms | 140 ms | 150 ms | 1.10× |" in table
    assert "| 32 (shipped) | 128 | 120 | 8 | 0 | 0 | 0 |" in table



def test_the_shipped_event_loop_is_compared_with_asyncio():
    results = synthetic_results()
    results["meta"]["asgi_loop"] = "uvloop"
    shipped = results["configs"][0]
    other = {key: value for key, value in shipped.items() if key not in ("burst", "sockets")}
    other.update(label="32, asyncio loop", shipped=False, asgi_loop="asyncio",
                 together={**shipped["together"], "ttft_p95": 0.15, "cpu_http": 1.6},
                 health={**shipped["health"], "health_p99": 0.02})
    results["configs"].append(other)
    table = report.render_markdown(results)
    assert "| uvloop (shipped) | 140 ms | 12 ms | 12 ms | 30 % |" in table
    assert "| asyncio | 150 ms | 12 ms | 20 ms | 40 % |" in table
    assert "| 32, asyncio loop | 32/32 | 0 | 100 ms | 150 ms |" in table
    # The targets are still judged from the shipped config alone.
    assert runner.evaluate_targets(results["configs"]) == results["targets"]

def test_a_tiny_run_end_to_end(tmp_path):
    step_dir = options.final_step()
    opts = options.Options(step_dir=step_dir, configs=[2], default_workers=2, repeat=1, together=2,
                         scenarios=frozenset({"together"}), prompt="hello", out_dir=tmp_path)
    results = stats.rounded(run_in_fresh_loop(runner.run_bench(opts, log=lambda line: None)))
    report.write_outputs(results, tmp_path)
    together = results["configs"][0]["together"]
    assert together["complete"] == together["streams"] == 2
    assert together["cut_off"] == 0
    assert 0 < together["ttft_p50"] < together["slowest"]
    assert together["health_samples"] > 0 and together["pss"] > 0
    # Some probes went out once both chats had heard from the server.
    assert together["health_p99_all_started"] is not None
    assert {"cpu_http", "cpu_arbiter", "cpu_dirty", "loop_lag_max"} <= together.keys()
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["step"] == step_dir.name
    assert "2 chats started together" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "ttft_by_workers.png").stat().st_size > 0
    assert (tmp_path / "burst.png").stat().st_size > 0


def test_room_arrivals_are_seeded_poisson_with_the_rooms_prompts():
    arrivals = scenarios.room_arrivals(2000, rate=2.0, seed=7)
    assert arrivals == scenarios.room_arrivals(2000, rate=2.0, seed=7)
    assert arrivals != scenarios.room_arrivals(2000, rate=2.0, seed=8)
    gaps = [later.at - earlier.at for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) > 0
    assert sum(gaps) / len(gaps) == pytest.approx(0.5, rel=0.1)
    asked = {(a.prompt, a.thinking) for a in arrivals}
    assert asked == {(prompt, thinking) for prompt, thinking, _ in options.ROOM}
    # The tag the bench adds to a prompt must not change the model's answer.
    for prompt, thinking, _ in options.ROOM:
        step_dir = options.final_step()
        assert scenarios.expected_answer_seconds(step_dir, f"{prompt} [chat 12]", thinking) == pytest.approx(
            scenarios.expected_answer_seconds(step_dir, prompt, thinking))


def chat(pid, sent, began, ended, arrived=None, to_first_token=0.05):
    return {"pid": pid, "sent": sent, "began": began, "ended": ended,
            "arrived": sent if arrived is None else arrived, "to_first_token": to_first_token,
            "collided": False}


def test_a_collision_is_a_chat_behind_a_busy_worker_while_another_is_idle():
    long, short = chat(1, 0.0, 0.0, 3.0), chat(2, 0.1, 0.1, 1.0)
    behind = chat(1, 1.5, 3.0, 4.0)  # worker 2 is idle since 1.0
    assert scenarios.find_collisions([long, short, behind], workers=2) == [behind]
    # Both workers busy: waiting is no collision, there was no idle worker to take.
    both_busy = chat(1, 0.5, 3.0, 4.0)
    assert scenarios.find_collisions([long, short, both_busy], workers=2) == []


def test_the_ideal_queue_gives_each_admitted_chat_a_free_worker_at_once():
    first = chat(1, 0.0, 0.01, 1.01, arrived=0.0)
    second = chat(1, 1.01, 1.5, 2.5, arrived=0.5)
    second["collided"] = True
    # One place: the second chat, arrived at 0.5, waits until the first is over (1.01), then its hop and word.
    assert scenarios.ideal_first_tokens([first, second], admitted=1) == pytest.approx([0.06, 0.57])
    # Two places: nobody waits.
    assert scenarios.ideal_first_tokens([first, second], admitted=2) == pytest.approx([0.06, 0.06])


def test_merge_keeps_the_scenarios_that_did_not_run():
    earlier = synthetic_results()
    mixed_only = {"meta": {"date": "later"}, "configs": [], "drop": None, "targets": [],
                  "mixed": {"runs": []}}
    merged = runner.merge_results(earlier, mixed_only)
    assert merged["configs"] == earlier["configs"] and merged["meta"] == earlier["meta"]
    assert merged["mixed"] == {"runs": []}
    assert runner.merge_results(merged, earlier)["mixed"] == {"runs": []}


def test_the_mixed_table_shows_measured_and_ideal_side_by_side():
    run = {"ratio": 1.25, "workers": 5, "load": 0.8, "chats": 60, "complete": 60, "ttft_p50": 0.01,
           "ttft_p95": 1.2, "ttft_p99": 2.0,
           "ideal_ttft_p50": 0.01, "ideal_ttft_p95": 0.5, "ideal_ttft_p99": 0.9,
           "collisions": 3, "collision_wait_p50": 0.8, "collision_wait_max": 2.1, "pss_idle": 80 * 1024}
    mixed = {"meta": synthetic_results()["meta"], "admitted": 4, "chats_per_load": 60, "seed": 1,
             "mean_answer": 3.1, "seconds": 600, "runs": [run]}
    table = report.render_mixed(mixed)
    assert ("| 80% | 5 (1.25×) | 60/60 | 10 ms / 1200 ms / 2000 ms | 10 ms / 500 ms / 900 ms | 3 |"
            " 800 ms / 2100 ms | 80 MiB |") in table


def test_a_tiny_mixed_run_end_to_end(tmp_path):
    step_dir = options.final_step()
    opts = options.Options(step_dir=step_dir, configs=[], default_workers=2, repeat=1, out_dir=tmp_path,
                         scenarios=frozenset({"mixed"}), mixed_admitted=2, mixed_ratios=(1.0,),
                         mixed_loads=(0.8,), mixed_chats=4, mixed_least_busy=False)
    results = stats.rounded(run_in_fresh_loop(runner.run_bench(opts, log=lambda line: None)))
    report.write_outputs(results, tmp_path)
    assert results["configs"] == []
    [run] = results["mixed"]["runs"]
    assert run["complete"] == run["chats"] == 4
    # bench_conf recorded which dirty worker answered every chat.
    assert run["unrecorded"] == 0 and 1 <= run["workers_used"] <= 2
    assert 0 < run["ttft_p50"] <= run["ttft_p99"]
    assert 0 < run["ideal_ttft_p50"] <= run["ideal_ttft_p99"]
    assert run["pss_idle"] > 0
    assert "A room's mix" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "mixed.png").stat().st_size > 0
