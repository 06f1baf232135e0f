"""The benchmark's pure parts (bench/run.py): lateness counting every expected delivery,
each phase counting only its own keys, the targets' verdicts and the report's text."""

from __future__ import annotations

import importlib.util
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.run import (
    PREFIX,
    SHORT,
    Check,
    Lateness,
    Report,
    burst_check,
    checks,
    lateness_at,
    measure,
    parse,
    polling_comparison,
    render,
    rss_check,
    run_kind,
    server_args,
    steady_checks,
    throughput_check,
    write,
)
from contract.models import ticket_workflow_id
from harness.sinks import Sink
from harness.temporal import SERVER_SETTINGS

DUE = 1_000.0


def record(path: str, key: str, due: float, arrived: float, stored: bool = True) -> dict[str, Any]:
    return {
        "path": path,
        "key": key,
        "body": {"due_at": datetime.fromtimestamp(due, UTC).isoformat()},
        "stored": stored,
        "arrived": arrived,
    }


def lateness(p99: float, *, expected: int = 100, missing: int = 0) -> Lateness:
    return Lateness(expected - missing, expected, p99 / 2, p99, p99, None, missing)


def report(**fields: Any) -> Report:
    machine = {"date": "2026-12-01T00:00:00+00:00", "cores": 2, "python": "3.11", "temporal": "t"}
    settings = {
        "tickets": 0,
        "window": 600,
        "burst": 500,
        "throughput": 300,
        "poll_interval": 30,
        "actions": False,
        "worker_processes": 1,
        "server_setting": [],
        "workflow_cache": 500,
    }
    settings.update(fields.pop("settings", {}))
    return Report({**machine, "platform": "linux"}, settings, **fields)


def short_run(
    burst: int, drains: tuple[float, float], rates: tuple[float, float], **fields: Any
) -> Report:
    """A short run's report: ``burst`` due at once drained in ``drains`` (tickets, floor),
    and 300 tickets and floor workflows completed at ``rates`` (tickets, floor)."""
    return report(
        kind="short",
        settings={"burst": burst},
        burst=Lateness(burst, burst, 1, 2, 2, drain_seconds=drains[0]),
        burst_floor=Lateness(burst, burst, 1, 2, 2, drain_seconds=drains[1]),
        throughput=rates[0],
        throughput_floor=rates[1],
        throughput_completed=300,
        throughput_floor_completed=300,
        **fields,
    )


# --- lateness -------------------------------------------------------------------------------


def test_lateness_counts_missing_deliveries_as_arriving_at_the_phase_end() -> None:
    got = [(f"F-{i:05d}", DUE, DUE + 0.1) for i in range(98)]
    expected = {f"F-{i:05d}": DUE for i in range(100)}
    late = measure(got, expected, end=DUE + 120)
    assert (late.count, late.expected, late.missing) == (98, 100, 2)
    assert late.max == pytest.approx(120)
    assert late.p99 == pytest.approx(120)  # two missing out of 100 are in the top 1 %
    assert late.p50 == pytest.approx(0.1)


def test_lateness_with_nothing_delivered_is_all_missing_not_empty() -> None:
    late = measure([], {"FB-00000": DUE, "FB-00001": DUE}, end=DUE + 130, burst=True)
    assert (late.count, late.missing) == (0, 2)
    assert late.p50 == pytest.approx(130)
    assert late.drain_seconds == pytest.approx(130)


def test_lateness_of_no_expected_delivery_is_not_a_number() -> None:
    late = Lateness.of([], 0)
    assert (late.count, late.missing) == (0, 0)
    assert math.isnan(late.p99)


def test_measure_counts_each_workflow_once_and_ignores_unexpected_keys() -> None:
    key = ticket_workflow_id("B-00000")
    got = [
        (f"{key}/breach/bench-hook", DUE, DUE + 2),
        (f"{key}/repeat-1/bench-hook", DUE, DUE + 50),
        (f"{ticket_workflow_id('B-99999')}/breach/bench-hook", DUE, DUE + 90),
    ]
    late = measure(got, {key: DUE}, end=DUE + 120, burst=True)
    assert (late.count, late.missing, late.max, late.drain_seconds) == (1, 0, 2, 2)


def test_lateness_at_keeps_only_its_phase_prefix() -> None:
    sink = Sink()
    steady = f"{ticket_workflow_id('S-00000')}/breach/bench-hook"
    burst = f"{ticket_workflow_id('B-00000')}/breach/bench-hook"
    sink.received += [
        record("/bench", steady, DUE, DUE + 1),
        record("/bench", burst, DUE, DUE + 2),
        record("/bench", burst, DUE, DUE + 3),  # a second copy: the first counts
        record("/floor", "F-00000", DUE, DUE + 4),
        record("/floor", "FB-00000", DUE, DUE + 5),
        record("/floor", "FB-00001", DUE, DUE + 6, stored=False),
        record("/floor", "FW-00000", DUE, DUE + 7),
    ]
    assert lateness_at(sink, "/bench", PREFIX["burst"]) == [(burst, DUE, DUE + 2)]
    assert lateness_at(sink, "/bench", PREFIX["steady"]) == [(steady, DUE, DUE + 1)]
    assert lateness_at(sink, "/floor", PREFIX["steady_floor"]) == [("F-00000", DUE, DUE + 4)]
    assert lateness_at(sink, "/floor", PREFIX["burst_floor"]) == [("FB-00000", DUE, DUE + 5)]
    alike = lateness_at(sink, "/floor", PREFIX["burst_floor_alike"])
    assert alike == [("FW-00000", DUE, DUE + 7)]
    assert len(lateness_at(sink, "/bench")) == 2  # no prefix: every key (bench/profile.py)


# --- the targets ----------------------------------------------------------------------------


def test_burst_short_of_its_floor_says_by_how_much() -> None:
    ours = Lateness(500, 500, 10, 20, 20, drain_seconds=20)  # 25/s
    floor = Lateness(500, 500, 2, 5, 5, drain_seconds=12.5)  # 40/s
    check = burst_check(ours, floor)
    assert check.met is False
    assert check.verdict() == "**not met**: 0.62 of floor, target 0.8: short by 0.18"
    assert check.measured == "25.0/s, floor 40.0/s"


def test_burst_with_missing_breaches_names_them() -> None:
    ours = Lateness(499, 500, 10, 20, 130, drain_seconds=130, missing=1)
    floor = Lateness(500, 500, 2, 5, 5, drain_seconds=10)
    check = burst_check(ours, floor)
    assert check.met is False
    assert "1 of 500 breaches not delivered when the phase ended" in check.note


def test_burst_at_its_floor_is_met_with_the_margin() -> None:
    check = burst_check(
        Lateness(500, 500, 1, 2, 10, drain_seconds=10),
        Lateness(500, 500, 1, 2, 10, drain_seconds=11),
    )
    assert check.met is True
    assert check.verdict() == "met: 1.10 of floor, target 0.8: 0.30 to spare"


def test_steady_checks_render_both_conditions() -> None:
    absolute, relative = steady_checks(lateness(1.17), lateness(0.52))
    assert absolute.met is False
    assert absolute.note == "p99 1.17 s, target 1 s: over by 0.17 s"
    assert relative.met is False
    assert relative.note == "2.25 x the floor's p99, target 1.5: over by 0.75"


def test_steady_one_second_does_not_apply_when_the_floor_itself_misses_it() -> None:
    absolute, relative = steady_checks(lateness(30.0), lateness(23.2))
    assert absolute.met is None
    assert absolute.verdict() == "n/a: the floor's own p99 is 23.20 s in this run, over 1 s"
    assert relative.met is True  # 1.29 x the floor's
    assert relative.note.endswith("0.21 to spare")


def test_steady_p99_within_one_second_but_over_the_floor_factor() -> None:
    absolute, relative = steady_checks(lateness(0.9), lateness(0.3))
    assert absolute.met is True
    assert relative.met is False
    assert relative.note == "3.00 x the floor's p99, target 1.5: over by 1.50"


def test_throughput_counts_what_did_not_complete() -> None:
    check = throughput_check(
        report(
            throughput=9.1,
            throughput_floor=19.1,
            throughput_completed=290,
            throughput_floor_completed=300,
        )
    )
    assert check.met is False
    assert check.note == (
        "0.48 of floor, target 0.8: short by 0.32; 10 of 300 tickets did not complete"
    )


def test_rss_target_is_judged_at_ten_thousand_open() -> None:
    assert rss_check({0: 120, 10_000: 294}).met is True
    over = rss_check({0: 120, 10_000: 340})
    assert (over.met, over.note) == (False, "340 MB, target 300 MB: over by 40 MB")
    short = rss_check({0: 120, 500: 240})
    assert short.met is None
    assert (
        short.note == "not measured at 10,000 open: at most 500 in this run (60 MB to spare there)"
    )
    assert rss_check({500: 320}).met is False
    assert "the largest of 2 processes" in rss_check({500: 200}, processes=2).target
    assert rss_check({}).met is None


def test_every_target_has_a_verdict_even_when_its_phase_did_not_run() -> None:
    found = checks(report())
    assert [c.phase for c in found] == [
        "steady",
        "steady",
        "burst",
        "throughput",
        "memory",
        "actions",
        "actions",
    ]
    assert all(c.met is None and c.measured == "not run" for c in found if c.phase != "memory")


def test_actions_targets_as_bench_actions_measured_them() -> None:
    targets = {
        "ack_path_total": {"target": 10, "measured": 12},
        "per_escalation_step": {"target": 2, "measured": 2.5},
    }
    found = checks(report(actions_targets=targets, settings={"actions": True}))
    ack, step = found[-2:]
    assert (ack.met, ack.note) == (False, "12 Actions, target 10: over by 2")
    assert (step.met, step.note) == (False, "2.50 per step, target 2: over by 0.5")


# --- the report -----------------------------------------------------------------------------


def test_report_says_delivered_of_expected_and_missing() -> None:
    text = render(
        report(
            kind="full",
            steady=Lateness(7_832, 10_000, 73.6, 417.4, 521.1, None, 2_168),
            steady_floor=lateness(23.2, expected=10_000),
            polling=lateness(29.97, expected=10_000),
            settings={"tickets": 10_000},
        )
    )
    assert text.startswith("# Benchmark report: full run (`make bench`)")
    assert "| steady: 10,000 breaches over 600 s | 7,832 of 10,000 | **2,168** |" in text
    assert "| phase | delivered | missing | p50 | p99 | max | drain |" in text


def test_polling_row_is_reported_whichever_way_it_compares() -> None:
    slower = render(report(steady=lateness(417.0), polling=lateness(29.97)))
    assert "polling baseline: a checker every 30 s" in slower
    assert "did better than the tickets" in slower
    faster = polling_comparison(lateness(29.97), lateness(0.5))
    assert "its p99 is 59.94x the tickets' (0.50 s)." in faster
    alone = render(report(polling=lateness(29.97)))
    assert "polling baseline" in alone and "Database-polling baseline" in alone


def test_short_report_header_and_verdicts(tmp_path: Path) -> None:
    short = short_run(500, (20, 12.5), (12.0, 30.0), rss_mb={0: 120.0, 500: 240.0})
    text = render(short)
    assert text.startswith("# Benchmark report: short run (`make bench-short`")
    assert "| burst | drain rate ≥ 0.8 x the floor's | 25.0/s, floor 40.0/s |" in text
    assert "short by 0.18" in text
    assert "| tickets opened, acknowledged and resolved | 300 of 300 | 12.0 |" in text
    write(short, tmp_path)
    document = json.loads((tmp_path / "latest.json").read_text())
    assert document["kind"] == "short"
    burst = next(t for t in document["targets"] if t["phase"] == "burst")
    assert burst["met"] is False
    assert (tmp_path / "latest.md").read_text() == text


def test_the_same_messages_floor_is_reported_beside_the_target_floor() -> None:
    text = render(
        report(
            kind="short",
            throughput=30.0,
            throughput_floor=60.0,
            throughput_completed=300,
            throughput_floor_completed=300,
            throughput_messages_floor=40.0,
            throughput_messages_floor_completed=290,
        )
    )
    # The target stays against the trivial floor; the same messages are a row of their own,
    # with what did not complete.
    assert "| throughput | tickets/s ≥ 0.8 x the floor's | 30.0/s, floor 60.0/s |" in text
    assert (
        "| the same messages on the bare engine: start, one activity, two signals"
        " | 290 of 300 | 40.0 |"
    ) in text
    assert "Tickets against the same messages on the bare engine: 0.75" in text


def test_the_report_says_what_stands_in_the_way_of_each_target_not_met() -> None:
    short = short_run(
        1000,
        (20, 5),
        (12.0, 30.0),
        throughput_messages_floor=24.0,
        throughput_messages_floor_completed=300,
    )
    text = render(short)
    assert "## What stands in the way of the targets not met" in text
    assert "the burst (1,000) is larger than the ticket worker's workflow cache (500)" in text
    assert "The same three calls on the bare engine ran at 24.0/s" in text
    assert "hold the tickets to 0.80 of the floor; the tickets ran at 0.50 of those" in text
    assert "What stands in the way" not in render(short_run(500, (5, 5), (30.0, 30.0)))


def test_the_burst_floor_with_the_ticket_workers_settings_splits_the_gap() -> None:
    # Tickets 1,000 in 20 s (50/s); the floor, SDK defaults, in 5 s (200/s); the same
    # bare workflows on the ticket worker's settings in 10 s (100/s).
    short = short_run(
        1000,
        (20, 5),
        (30.0, 30.0),
        burst_floor_alike=Lateness(1000, 1000, 1, 2, 2, drain_seconds=10),
    )
    text = render(short)
    # The target's verdict stays against the SDK-default floor.
    assert "| burst | drain rate ≥ 0.8 x the floor's | 50.0/s, floor 200.0/s |" in text
    assert (
        "| burst floor, the ticket worker's settings (cache 500, no sandbox): the same bare"
        " workflows | 1,000 of 1,000 | 0 |"
    ) in text
    assert "Burst drain against the floor with the ticket worker's settings: 0.50" in text
    # (200 - 100) of the (200 - 50) gap is the engine's own eviction cost.
    assert "drained the same burst at 100.0/s (against 200.0/s with the SDK's)" in text
    assert "evictions cost the engine itself 67% of the gap" in text
    assert "the tickets ran at 0.50 of that floor" in text
    # Without the second floor (a custom run's report from before it), none of it.
    assert "ticket worker's settings" not in render(short_run(1000, (20, 5), (30.0, 30.0)))


def test_the_floor_worker_takes_the_sdk_defaults_or_the_ticket_workers_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from temporalio.worker import UnsandboxedWorkflowRunner

    from bench.floor import worker_settings

    monkeypatch.delenv("BENCH_FLOOR_SETTINGS", raising=False)
    assert worker_settings() == {}
    monkeypatch.setenv("BENCH_FLOOR_SETTINGS", "worker")
    monkeypatch.setenv("SUPPORT_WORKFLOW_CACHE", "321")
    monkeypatch.delenv("SUPPORT_WORKFLOW_SANDBOX", raising=False)
    settings = worker_settings()
    assert settings["max_cached_workflows"] == 321
    assert isinstance(settings["workflow_runner"], UnsandboxedWorkflowRunner)
    monkeypatch.setenv("BENCH_FLOOR_SETTINGS", "tickets")
    with pytest.raises(SystemExit, match="BENCH_FLOOR_SETTINGS: expected sdk or worker"):
        worker_settings()


def test_per_process_rss_rows() -> None:
    text = render(
        report(
            rss_mb={0: 240.0, 500: 400.0},
            rss_per_process_mb={0: [120.0, 120.0], 500: [210.0, 190.0]},
            settings={"worker_processes": 2},
        )
    )
    assert "2 processes: their sum" in text
    assert "| worker0 (MB) | 120 | 210 |" in text
    assert "| worker1 (MB) | 120 | 190 |" in text


def test_check_verdict_text() -> None:
    assert Check("x", "t", "m", None).verdict() == "n/a"
    assert Check("x", "t", "m", True, "fine").verdict() == "met: fine"
    assert Check("x", "t", "m", False, "short").verdict() == "**not met**: short"


# --- the command line -----------------------------------------------------------------------


def test_defaults_are_the_full_run_and_short_is_the_regression_guard() -> None:
    assert run_kind(parse([])) == "full"
    short = parse(["--short"])
    assert {k: getattr(short, k) for k in SHORT} == SHORT
    assert run_kind(short) == "short"
    assert run_kind(parse(["--short", "--burst", "1000"])) == "short"
    assert parse(["--short", "--burst", "1000"]).burst == 1000
    assert (
        run_kind(parse(["--tickets", "0", "--burst", "500", "--throughput", "300", "--no-actions"]))
        == "short"
    )
    assert run_kind(parse(["--tickets", "1000"])) == "custom"


def test_worker_processes_and_server_settings() -> None:
    args = parse(
        [
            "--worker-processes",
            "2",
            "--server-setting",
            "matching.numTaskqueueReadPartitions=1",
            "--server-setting",
            "history.cacheMaxSize=1024",
            "--out",
            "/tmp/compare",
        ]
    )
    assert args.worker_processes == 2
    assert args.out == Path("/tmp/compare")
    assert args.sqlite_synchronous == "normal"  # make run's default
    assert server_args(args.server_setting) == [
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        # make run's server settings, a run's own replacing the value of the same name
        "--dynamic-config-value",
        "matching.numTaskqueueReadPartitions=1",
        "--dynamic-config-value",
        "matching.numTaskqueueWritePartitions=1",
        "--dynamic-config-value",
        "history.cacheMaxSize=1024",
    ]
    # A run's setting replaces make run's value of the same name.
    again = server_args(["matching.numTaskqueueReadPartitions=4"])
    assert again[5] == "matching.numTaskqueueReadPartitions=4"
    assert again.count("--dynamic-config-value") == len(SERVER_SETTINGS)
    with pytest.raises(SystemExit):
        parse(["--server-setting", "no-value"])
    with pytest.raises(SystemExit):
        parse(["--worker-processes", "0"])


def test_the_sqlite_sync_mode_is_a_choice_of_two() -> None:
    """``--sqlite-synchronous full`` compares against every commit synced; anything else
    is refused by name, before a server starts."""
    args = parse(["--short", "--sqlite-synchronous", "full"])
    assert args.sqlite_synchronous == "full"
    assert server_args([], args.sqlite_synchronous)[2:4] == ["--sqlite-pragma", "synchronous=full"]
    with pytest.raises(SystemExit):
        parse(["--sqlite-synchronous", "off"])
    with pytest.raises(ValueError, match="TEMPORAL_SQLITE_SYNCHRONOUS: expected one of normal,"):
        server_args([], "off")


def test_the_memory_target_judges_the_largest_worker_process() -> None:
    """Each process holds its own cache: two at 210 and 190 MB meet 300 MB per worker."""
    found = checks(
        report(
            rss_mb={0: 240.0, 10_000: 400.0},
            rss_per_process_mb={0: [120.0, 120.0], 10_000: [210.0, 190.0]},
            settings={"worker_processes": 2},
        )
    )
    memory = next(c for c in found if c.phase == "memory")
    assert (memory.met, memory.measured) == (True, "210 MB with 10,000 open")
    assert "the largest of 2 processes" in memory.target


def test_a_target_met_exactly_has_nothing_to_spare() -> None:
    targets = {"per_escalation_step": {"target": 2, "measured": 2.0}}
    [step] = [c for c in checks(report(actions_targets=targets)) if "step" in c.target]
    assert (step.met, step.note) == (True, "2.00 per step, target 2: 0 to spare")


def test_make_run_takes_the_sync_mode_from_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``make run`` syncs its SQLite commits as TEMPORAL_SQLITE_SYNCHRONOUS says (normal
    unless set) and stops, naming the variable, on anything else."""
    spec = importlib.util.spec_from_file_location(
        "run_local", Path(__file__).resolve().parents[2] / "scripts" / "run_local.py"
    )
    assert spec is not None and spec.loader is not None
    run_local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_local)
    monkeypatch.delenv("TEMPORAL_SQLITE_SYNCHRONOUS", raising=False)
    assert "synchronous=normal" in run_local.dev_server_settings()
    monkeypatch.setenv("TEMPORAL_SQLITE_SYNCHRONOUS", "full")
    assert "synchronous=full" in run_local.dev_server_settings()
    monkeypatch.setenv("TEMPORAL_SQLITE_SYNCHRONOUS", "off")
    with pytest.raises(SystemExit, match="TEMPORAL_SQLITE_SYNCHRONOUS: expected one of"):
        run_local.dev_server_settings()
