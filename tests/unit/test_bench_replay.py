"""The replay benchmark's pure parts (bench/replay.py): checkpoints, the history's sizes,
the verdict and the table, and the section bench/run.py's report gives them."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.common.v1 import Header, Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import (
    ActivityTaskScheduledEventAttributes,
    HistoryEvent,
    TimerStartedEventAttributes,
)
from temporalio.client import WorkflowHistory

from bench.replay import (
    CURRENT,
    PREVIOUS,
    Point,
    age_label,
    checkpoints,
    history_sizes,
    largest_payload,
    markdown,
    parse,
    to_json,
    verdict,
)
from bench.run import Report, render

LIMIT = 5000


def point(
    hours: float, replay: float, which: str = CURRENT, run: int = 1, events: int = 100
) -> Point:
    return Point(hours, which, run, events, events * run, events * 300, 2_000, replay, replay * 2)


def scheduled(event_id: int, *sizes: int, header: int = 0) -> HistoryEvent:
    attributes = ActivityTaskScheduledEventAttributes(
        input=Payloads(payloads=[Payload(data=b"x" * n) for n in sizes]),
        header=Header(fields={"trace": Payload(data=b"h" * header)}) if header else None,
    )
    return HistoryEvent(
        event_id=event_id,
        event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        activity_task_scheduled_event_attributes=attributes,
    )


# --- checkpoints and sizes ----------------------------------------------------------------


def test_checkpoints_go_up_to_the_last_day_and_include_it() -> None:
    hour, day = timedelta(hours=1), timedelta(days=1)
    assert checkpoints(7) == [hour, day, 3 * day, 7 * day]
    assert checkpoints(2) == [hour, day, 2 * day]
    assert checkpoints(10) == [hour, day, 3 * day, 7 * day, 10 * day]
    assert checkpoints(0.5) == [hour, day / 2]


def test_ages_read_in_hours_below_a_day_and_in_days_from_one() -> None:
    assert [age_label(h) for h in (1, 12, 24, 72, 36)] == ["1 h", "12 h", "1 d", "3 d", "1.5 d"]


def test_the_largest_payload_is_found_in_lists_and_maps_alike() -> None:
    assert largest_payload(scheduled(1, 10, 500, 20)) == Payload(data=b"x" * 500).ByteSize()
    assert largest_payload(scheduled(1, 10, header=900)) == Payload(data=b"h" * 900).ByteSize()
    timer = HistoryEvent(
        event_id=2,
        event_type=EventType.EVENT_TYPE_TIMER_STARTED,
        timer_started_event_attributes=TimerStartedEventAttributes(timer_id="1"),
    )
    assert largest_payload(timer) == 0


def test_history_sizes_count_events_bytes_and_the_largest_payload() -> None:
    events = [scheduled(1, 100), scheduled(2, 3_000), scheduled(3, 40)]
    history = WorkflowHistory("wf", events)
    count, size, largest = history_sizes(history)
    assert count == 3
    assert size == sum(e.ByteSize() for e in events)
    assert largest == Payload(data=b"x" * 3_000).ByteSize()


# --- the verdict and the table ------------------------------------------------------------


def test_replay_within_twice_the_one_day_figure_is_bounded() -> None:
    points = [
        point(1, 0.02),
        point(24, 0.9, events=3_000),
        point(168, 0.5, run=6, events=2_000),
        point(168, 1.1, PREVIOUS, run=5, events=4_100),  # the worst at 7 d
    ]
    line = verdict(points, LIMIT)
    assert line.startswith("Bounded: worst replay at 7 d 1.100 s against 0.900 s at 1 d")
    assert "(1.22x, bound 2x); 6 runs, none longer than 4,100 events" in line
    assert "(history limit 5,000)" in line


def test_the_reference_is_the_first_full_run_when_one_came_before_the_last_checkpoint() -> None:
    # A run holds more than a day of steps: the 1-day figure is part of a run, not a full one.
    points = [
        point(24, 0.45, events=1_741),
        point(72, 0.28, run=2, events=1_128),
        point(72, 1.2, PREVIOUS, run=1, events=4_105),  # the first full run
        point(168, 1.1, run=3, events=3_998),
        point(168, 1.3, PREVIOUS, run=2, events=4_102),
    ]
    line = verdict(points, LIMIT)
    assert line.startswith(
        "Bounded: worst replay at 7 d 1.300 s against 1.200 s at 3 d, the first full run"
        " (1.08x, bound 2x); 3 runs"
    ), line
    # A ticket that continued as new only by its last checkpoint is judged against 1 day.
    assert "against 0.450 s at 1 d (2.89x" in verdict(points[:1] + points[3:], LIMIT)


def test_replay_past_twice_the_one_day_figure_grows() -> None:
    points = [point(24, 0.5, events=3_000), point(168, 3.5, events=21_000)]
    line = verdict(points, LIMIT)
    assert line.startswith("GROWS with the days: worst replay at 7 d 3.500 s")
    assert "(7.00x, bound 2x)" in line and "none longer than 21,000 events" in line


def test_no_verdict_without_a_checkpoint_past_one_day() -> None:
    assert verdict([point(1, 0.02), point(24, 0.9)], LIMIT).startswith("n/a")
    assert verdict([point(1, 0.02), point(12, 0.3)], LIMIT).startswith("n/a")


def test_the_table_has_a_row_per_history_and_the_verdict() -> None:
    points = [point(24, 0.9, events=3_234), point(72, 1.0, PREVIOUS, run=2, events=4_115)]
    points.append(Point(72, CURRENT, 3, 1_513, 9_734, 513_834, 75_778, 0.271, None))
    text = markdown(points, LIMIT, repeats=5)
    lines = text.splitlines()
    assert "median of 5 replays" in lines[0] and "history limit 5,000 events" in lines[0]
    assert lines[2].startswith("| age | run | history | events |")
    assert "| 1 d | 1 | current | 3,234 |" in lines[4]
    assert "| 3 d | 2 | previous (full) | 4,115 |" in lines[5]
    assert lines[6] == ("| 3 d | 3 | current | 1,513 | 9,734 | 513,834 | 75,778 | 0.271 s | n/a |")
    assert lines[-1] == verdict(points, LIMIT)


def test_the_json_document_carries_the_points_and_the_verdict() -> None:
    points = [point(24, 0.9), point(168, 1.0, run=5)]
    document = json.loads(to_json(points, LIMIT, repeats=3, days=7))
    assert (document["days"], document["repeats"], document["history_limit"]) == (7, 3, LIMIT)
    assert document["points"][1]["run"] == 5
    assert document["verdict"].startswith("Bounded")


def test_options() -> None:
    args = parse([])
    assert (args.days, args.repeats, args.sandboxed, args.json) == (7, 5, True, None)
    args = parse(["--days", "2", "--repeats", "3", "--no-sandboxed"])
    assert (args.days, args.repeats, args.sandboxed) == (2, 3, False)
    with pytest.raises(SystemExit):
        parse(["--days", "0"])


# --- in the benchmark's report ------------------------------------------------------------


def report(**fields: Any) -> Report:
    machine = {"date": "2026-12-05T00:00:00+00:00", "cores": 2, "python": "3.11"}
    machine |= {"temporal": "t", "platform": "linux"}
    settings = {"window": 600, "poll_interval": 30, "workflow_cache": 500}
    return Report(machine, settings, **fields)


def test_the_report_has_a_replay_section_only_when_it_was_measured() -> None:
    assert "Replay after cache eviction" not in render(report())
    table = markdown([point(24, 0.9), point(168, 1.0, run=5)], LIMIT, repeats=5)
    text = render(report(replay_markdown=table))
    assert "\n## Replay after cache eviction (`python -m bench.replay`)\n\n" in text
    assert text.endswith(table)
