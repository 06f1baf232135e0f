"""The fault drills' results file (drills/verdict.py): what a full-size run writes to
drills/results/latest-<drill>.md beside the verdict line it prints."""

from __future__ import annotations

from pathlib import Path

from drills.verdict import RESULTS, Verdict, parser


def test_a_passing_drill_writes_its_run_and_verdict_line(tmp_path: Path) -> None:
    verdict = Verdict("worker-kill", figures={"tickets": 1000, "lost": 0})
    written = verdict.write(
        tmp_path, "python -m drills.worker_kill", {"profile": "full", "tickets": 1000}
    )
    assert written == tmp_path / "latest-worker-kill.md"
    text = written.read_text()
    assert text.startswith("# Drill worker-kill: PASS\n")
    assert "`python -m drills.worker_kill` (profile=full, tickets=1000)" in text
    assert "```\nDRILL worker-kill: PASS tickets=1000 lost=0\n```" in text
    assert "Problems" not in text


def test_a_failing_drill_lists_its_problems(tmp_path: Path) -> None:
    problems = [f"lost delivery k{i}" for i in range(45)]
    verdict = Verdict("races", figures={"lost": 45}, problems=problems)
    text = verdict.markdown("python -m drills.races", {"profile": "full"}, date="2026-12-01")
    assert text.startswith("# Drill races: FAIL\n")
    assert "- lost delivery k39\n" in text
    assert "- lost delivery k40\n" not in text
    assert "- ... and 5 more\n" in text


def test_results_go_to_drills_results_and_out_overrides() -> None:
    assert RESULTS.parts[-2:] == ("drills", "results")
    args = parser("races", None, 100, 12).parse_args(["--short", "--out", "/tmp/d"])
    assert (args.short, args.out) == (True, Path("/tmp/d"))
    assert parser("races", None, 100, 12).parse_args([]).out is None
