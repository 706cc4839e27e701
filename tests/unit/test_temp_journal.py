"""The temp-file journal finds what a crash left behind, and stays small."""

from agents.transfer.temp_journal import TempFile, TempJournal


def test_leftovers_of_a_crashed_run_are_found_and_removed(tmp_path):
    """Entries started but not finished are leftovers at the next start; local ones go."""
    journal_path = tmp_path / "data" / "journal"
    left = tmp_path / ".a.part"
    left.write_bytes(b"partial")
    journal = TempJournal(journal_path)
    journal.started(TempFile(str(left)))
    journal.started(TempFile("/remote/.b.part", "ftp-a"))
    journal.started(TempFile(str(tmp_path / ".done.part")))
    journal.finished(TempFile(str(tmp_path / ".done.part")))
    journal.close()  # the lines are on disk already (line-buffered), as after a SIGKILL
    restarted = TempJournal(journal_path)
    assert set(restarted.leftovers) == {TempFile(str(left)), TempFile("/remote/.b.part", "ftp-a")}
    assert restarted.remove_local_leftovers() == 1
    assert not left.exists()
    assert restarted.remote_leftovers() == [TempFile("/remote/.b.part", "ftp-a")]
    restarted.close()
    again = TempJournal(journal_path)
    assert again.leftovers == [TempFile("/remote/.b.part", "ftp-a")]
    again.close()


def test_journal_is_compacted_as_it_grows(tmp_path):
    """Finished entries do not accumulate: the file is rewritten with the live ones only."""
    journal = TempJournal(tmp_path / "journal", compact_after=100)
    for n in range(1000):
        journal.started(TempFile(f"/t/{n}"))
        journal.finished(TempFile(f"/t/{n}"))
    journal.started(TempFile("/t/live"))
    journal.close()
    assert len((tmp_path / "journal").read_text().splitlines()) < 110
    reopened = TempJournal(tmp_path / "journal")
    assert reopened.leftovers == [TempFile("/t/live")]
    reopened.close()


def test_a_line_cut_short_by_a_crash_is_ignored(tmp_path):
    """A torn last line does not stop the replay."""
    path = tmp_path / "journal"
    path.write_text('["+", null, "/t/a"]\n["+", null, "/t/b"')
    journal = TempJournal(path)
    assert journal.leftovers == [TempFile("/t/a")]
    journal.close()
