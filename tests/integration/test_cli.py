"""The ``ftp-pooler`` commands against a running worker, broker and FTP server."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import PASSWORD, Stack, closed_port, task

CLI = Path(sys.executable).with_name("ftp-pooler")
FAUST = Path(sys.executable).with_name("faust")


def row(table: str, *cells: str) -> bool:
    """Whether the rendered table has a row starting with these cells."""
    pattern = r"│\s*" + r"\s*│\s*".join(re.escape(c) for c in cells) + r"\s*│"
    return re.search(pattern, table) is not None


def cli(stack: Stack, *args: str, program: Path = CLI, timeout: float = 90) -> tuple[int, str, str]:
    """Run a command with the worker's configuration; (exit code, stdout, stderr)."""
    done = subprocess.run(
        [str(program), *args],
        cwd=stack.root,
        env=stack.worker.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("cli"))
    (stack.ftp_root / "in").mkdir(parents=True)
    for n in range(100):
        (stack.ftp_root / "in" / f"f{n}.bin").write_bytes(bytes([n]) * (1000 + n))
    stack.add_worker(extra_env={"FTP_POOLER_RETRY__MAX_ATTEMPTS": "1"})
    yield stack.start()
    stack.close()


def test_submit_of_100_tasks_from_a_file_waits_and_prints_the_summary(stack):
    """100 downloads from a JSON-lines file: exit 0, every one done, summary with throughput."""
    path = stack.root / "tasks.jsonl"
    lines = [
        json.dumps(task(f"file-{n}", "ftp-a", f"/in/f{n}.bin", "local", f"/got/f{n}.bin"))
        for n in range(100)
    ]
    path.write_text("\n".join(lines) + "\n")
    code, out, err = cli(stack, "submit", "--file", str(path))
    print(out)
    assert code == 0, out + err
    assert "produced 100 task(s)" in out
    assert "100/100" in out and "100 done" in out and "0 failed" in out  # the progress line
    assert "Summary" in out and row(out, "success", "-", "100")
    assert "100 of 100 tasks finished in" in out and "files/s" in out
    total = sum(1000 + n for n in range(100))
    assert f"{total / 1024:.1f} KiB" in out
    assert all((stack.storage / "got" / f"f{n}.bin").exists() for n in range(100))


def test_submit_with_one_missing_file_exits_1_and_names_the_failure(stack):
    """A CSV of 5 tasks, one source missing: exit 1, the failure listed by id and code."""
    path = stack.root / "tasks.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["task_id", "src_id", "src_path", "dst_id", "dst_path"])
        writer.writeheader()
        for n in range(4):
            writer.writerow(task(f"csv-{n}", "ftp-a", f"/in/f{n}.bin", "local", f"/csv/{n}.bin"))
        writer.writerow(task("csv-missing", "ftp-a", "/in/no-such.bin", "local", "/csv/x.bin"))
    code, out, err = cli(stack, "submit", "-f", str(path))
    assert code == 1, out + err
    assert row(out, "success", "-", "4") and row(out, "failed", "FILE_NOT_FOUND", "1")
    assert "Failures" in out and "csv-missing" in out and "no-such.bin" in out
    assert "Traceback" not in out + err


def test_submit_from_stdin_and_flags_and_no_wait(stack):
    """stdin (JSON lines) works like a file; one task from flags with --no-wait only produces."""
    one = json.dumps(task("stdin-1", "ftp-a", "/in/f1.bin", "local", "/stdin/1.bin"))
    done = subprocess.run(
        [str(CLI), "submit", "-f", "-"],
        input=one + "\n",
        cwd=stack.root,
        env=stack.worker.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of 1 tasks finished" in done.stdout
    code, out, err = cli(
        stack,
        "submit",
        "--task-id",
        "flag-1",
        "--src-id",
        "ftp-a",
        "--src-path",
        "/in/f2.bin",
        "--dst-id",
        "local",
        "--dst-path",
        "/flags/2.bin",
        "--no-wait",
    )
    assert code == 0, out + err
    assert out.strip() == f"produced 1 task(s) to {stack.names.tasks}"


def test_submit_refuses_invalid_input_before_producing_anything(stack):
    """An invalid line (or a repeated task_id) exits 2 naming the line; nothing is produced."""
    path = stack.root / "bad.jsonl"
    good = task("bad-file-ok", "ftp-a", "/in/f3.bin", "local", "/bad/3.bin")
    path.write_text(
        json.dumps(good)
        + "\n"
        + json.dumps({"task_id": "x", "src_id": "ftp-a"})
        + "\n"
        + json.dumps(good)
        + "\n"
    )
    code, out, err = cli(stack, "submit", "-f", str(path), "--no-wait")
    assert code == 2, out + err
    assert f"{path} line 2: src_path: Field required" in err
    assert f"{path} line 3: task_id 'bad-file-ok' already used ({path} line 1)" in err
    assert "nothing was produced" in err and "Traceback" not in err
    code, out, err = cli(stack, "submit", "-f", str(stack.root / "absent.jsonl"))
    assert code == 2 and "cannot read" in err and "Traceback" not in err


def test_check_config_probe_reports_an_unreachable_server_without_a_traceback(stack):
    """--probe logs in to ftp-a, reports ftp-dead unreachable; exit 1; the same via faust -A app."""
    code, out, err = cli(stack, "check-config", "--probe")
    assert code == 1, out + err
    assert "configuration OK" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 5}
    assert "ok" in rows["ftp-a"] and "logged in, NOOP answered" in rows["ftp-a"]
    assert "FAILED" in rows["ftp-dead"] and "CONNECTION_ERROR" in rows["ftp-dead"]
    assert "ok" in rows["local"]
    assert "1 of 4 connections unreachable" in out
    assert "Traceback" not in out + err and PASSWORD not in out + err
    code, out, err = cli(stack, "-A", "app", "check-config", program=FAUST)
    assert code == 0, out + err
    assert "configuration OK" in out and "ftp-dead" in out


def test_check_config_names_a_bad_registry_key_and_exits_2(stack, tmp_path):
    """A broken connections.ini stops every command with the file, section and key."""
    bad = tmp_path / "bad.ini"
    bad.write_text(f"[x]\ntype = ftp\nhost = h\nport = {closed_port()}\ncolour = blue\n")
    done = subprocess.run(
        [str(CLI), "check-config"],
        cwd=stack.root,
        env={**stack.worker.env(), "FTP_POOLER_CONNECTIONS": str(bad)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"configuration error: {bad} [x] colour: unknown key" in done.stderr
    assert "Traceback" not in done.stderr


def test_status_prints_the_workers_status_as_tables(stack):
    """Worker, session pools and fleet tables from /status; --json gives the raw document."""
    url = f"http://127.0.0.1:{stack.worker.api_port}"
    code, out, err = cli(stack, "status", "--url", url)
    assert code == 0, out + err
    print(out)
    assert "Worker w1" in out and "ready" in out
    assert f"partitions of {stack.names.tasks}" in out
    assert "Session pools" in out and "ftp-a" in out and "ftp-dead" in out
    assert "Fleet" in out
    code, out, err = cli(stack, "status", "--url", url, "--json")
    assert code == 0 and json.loads(out)["worker"] == "w1"
    code, out, err = cli(stack, "status", "--url", f"http://127.0.0.1:{closed_port()}")
    assert code == 1 and "cannot read" in err and "Traceback" not in err
