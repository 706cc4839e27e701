"""Task status entries: how changes merge, what the API shows, how they travel."""

from __future__ import annotations

import pytest

from models.status import StatusEntry, TaskState, iso, merge_status


def submitted(at: str = "t0") -> StatusEntry:
    return StatusEntry(
        task_id="a", state=TaskState.QUEUED, submitted=True, queued_at=at, updated_ts=1.0
    )


def test_a_submission_starts_a_fresh_entry_with_no_attempts():
    """Resubmitting a finished id forgets the old outcome (error code, finish time)."""
    old = StatusEntry(task_id="a", state=TaskState.FAILED, error_code="IO_ERROR", attempts=3)
    entry = merge_status(old, submitted())
    assert entry.to_json() == {
        "task_id": "a",
        "state": "queued",
        "queued_at": "t0",
        "attempts": 0,
        "_ts": 1.0,
    }


def test_an_attempt_keeps_the_queue_time_and_clears_the_previous_outcome():
    """in_progress after a parked retry: queued_at stays, the retry's due time goes."""
    parked = merge_status(None, submitted())
    parked.next_attempt_at, parked.last_error_code, parked.attempts = "t2", "CONNECTION_ERROR", 1
    change = StatusEntry(task_id="a", state=TaskState.IN_PROGRESS, attempts=2, started_at="t3")
    entry = merge_status(parked, change)
    assert entry.queued_at == "t0" and entry.attempts == 2 and entry.started_at == "t3"
    assert entry.next_attempt_at is None
    assert entry.last_error_code == "CONNECTION_ERROR"  # why it was retried stays visible


def test_the_outcome_adds_its_fields_and_unknown_fields_leave_the_entry_alone():
    """success carries bytes and sha256; a field the change does not set is kept."""
    running = merge_status(
        None, StatusEntry(task_id="a", state=TaskState.IN_PROGRESS, started_at="t1")
    )
    done = merge_status(
        running,
        StatusEntry(
            task_id="a",
            state=TaskState.SUCCESS,
            finished_at="t2",
            bytes_transferred=5,
            sha256="ab",
        ),
    )
    assert done.state is TaskState.SUCCESS and done.started_at == "t1"
    assert done.bytes_transferred == 5 and "error_code" not in done.to_json()


def test_public_view_puts_the_main_fields_first_and_hides_bookkeeping():
    """task_id and state lead; _ts and _partition never leave the worker."""
    stored = {"_ts": 1.0, "queued_at": "t0", "state": "failed", "_partition": 3, "task_id": "a"}
    entry = StatusEntry.from_json(stored)
    assert entry.updated_ts == 1.0 and entry.partition == 3
    assert list(entry.public()) == ["task_id", "state", "queued_at"]


def test_stored_json_round_trips_and_keeps_fields_of_a_newer_worker():
    """An entry written by a newer version (an unknown field) survives a merge unchanged."""
    stored = {"task_id": "a", "state": "success", "attempts": 2, "_ts": 5.0, "future": [1]}
    entry = StatusEntry.from_json(stored)
    assert entry.to_json() == stored
    merged = merge_status(entry, StatusEntry(task_id="a", state=TaskState.FAILED))
    assert merged.to_json()["future"] == [1]


@pytest.mark.parametrize("value", [None, [], {"state": "done"}, {"task_id": "a"}])
def test_a_value_that_is_not_a_status_entry_is_refused(value):
    """The status agent skips (and logs) anything that is not a change it knows."""
    with pytest.raises(ValueError, match="not a status entry"):
        StatusEntry.from_json(value)


def test_iso_timestamps_are_utc_with_milliseconds():
    assert iso(0) == "1970-01-01T00:00:00.000+00:00"
