"""Task status entries: how updates merge, what the API shows, which partition an id lives in."""

from __future__ import annotations

from agents.task_status import (
    FAILED,
    IN_PROGRESS,
    QUEUED,
    SUCCESS,
    iso,
    merge_status,
    public_entry,
)


def submitted(at: str = "t0") -> dict:
    return {"state": QUEUED, "submitted": True, "task_id": "a", "queued_at": at, "_ts": 1.0}


def test_a_submission_starts_a_fresh_entry_with_no_attempts():
    """Resubmitting a finished id forgets the old outcome (error code, finish time)."""
    old = {"state": FAILED, "task_id": "a", "error_code": "IO_ERROR", "attempts": 3}
    entry = merge_status(old, submitted())
    assert entry == {"state": QUEUED, "task_id": "a", "queued_at": "t0", "attempts": 0, "_ts": 1.0}


def test_an_attempt_keeps_the_queue_time_and_clears_the_previous_outcome():
    """in_progress after a parked retry: queued_at stays, the retry's due time goes."""
    parked = {
        **merge_status(None, submitted()),
        "next_attempt_at": "t2",
        "last_error_code": "CONNECTION_ERROR",
        "attempts": 1,
    }
    entry = merge_status(parked, {"state": IN_PROGRESS, "attempts": 2, "started_at": "t3"})
    assert entry["queued_at"] == "t0" and entry["attempts"] == 2 and entry["started_at"] == "t3"
    assert "next_attempt_at" not in entry
    assert entry["last_error_code"] == "CONNECTION_ERROR"  # why it was retried stays visible


def test_the_outcome_adds_its_fields_and_none_values_are_not_written():
    """success carries bytes and sha256; a field given as None leaves the entry alone."""
    running = merge_status(None, {"state": IN_PROGRESS, "task_id": "a", "started_at": "t1"})
    done = merge_status(
        running,
        {
            "state": SUCCESS,
            "finished_at": "t2",
            "bytes_transferred": 5,
            "sha256": "ab",
            "error_code": None,
        },
    )
    assert (
        done["state"] == SUCCESS and done["started_at"] == "t1" and done["bytes_transferred"] == 5
    )
    assert "error_code" not in done


def test_public_entry_puts_the_main_fields_first_and_hides_bookkeeping():
    """task_id and state lead; _ts and _partition never leave the worker."""
    entry = {"_ts": 1.0, "queued_at": "t0", "state": FAILED, "_partition": 3, "task_id": "a"}
    shown = public_entry(entry)
    assert list(shown) == ["task_id", "state", "queued_at"]


def test_iso_timestamps_are_utc_with_milliseconds():
    assert iso(0) == "1970-01-01T00:00:00.000+00:00"
