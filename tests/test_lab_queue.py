"""The lab queue: runs submitted for benches, run by one worker per bench, on PostgreSQL.

The tests that need a server take ``postgres_url`` (skipped unless ``HIL_TEST_POSTGRES_URL`` is set; CI's
``.ci/run`` starts one). The main one runs thirty queued runs on three emulated benches (two serial
boards, one SMU) while workers are killed (SIGKILL) at random moments and restarted: every run ends
completed exactly once, no step runs twice at once, and the records stay whole.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

import hil.queue
import hil.submit
import hil.worker
from drivers.emulators.faults import Faults
from drivers.emulators.keithley2600 import TspInstrument, TspServer
from drivers.emulators.serial_board import BoardEmulator, BoardServer
from drivers.mock import SoftwareCrossbar

ROOT = Path(__file__).resolve().parent.parent
# small 8x8 protocols, shared with benchmarks/bench_queue.py
SMALL = ROOT / "tests" / "data" / "protocols"

READ = (SMALL / "read8.yaml").read_text(encoding="utf-8")

PROGRAM = (SMALL / "program8.yaml").read_text(encoding="utf-8")

CHECKER = (SMALL / "checker8.yaml").read_text(encoding="utf-8")

BAD = """name: bad
array: {rows: 8, cols: 8}
steps:
  - kind: read
    name: look
    read_voltage_v: "0.2"
"""

SECRET = "s3cr3t-pw"


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _sql(url: str, query: str, **params):
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(query), params)
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


# -- refusals that need no server ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["submit", "worker", "queue", "cancel"])
def test_a_sqlite_url_is_refused_by_the_queue_commands_with_nothing_created(command, tmp_path, capsys):
    protocol = _write(tmp_path, "read.yaml", READ)
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    argv = {"submit": (hil.submit.main, [str(protocol), "--bench", "A", "--db", url]),
            "worker": (hil.worker.main, ["--bench", "A", "--db", url]),
            "queue": (hil.queue.main, ["--db", url]),
            "cancel": (hil.queue.main, ["cancel", "1", "--db", url])}[command]
    assert argv[0](argv[1]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: the queue needs PostgreSQL") and "sqlite:///" in err
    assert not (tmp_path / "bench.db").exists()


@pytest.mark.parametrize("command", ["submit", "queue"])
def test_credentials_never_appear_in_errors(command, tmp_path, capsys):
    protocol = _write(tmp_path, "read.yaml", READ)
    url = f"postgresql://lab:{SECRET}@127.0.0.1:1/lab"          # nothing listens on port 1
    main, argv = {"submit": (hil.submit.main, [str(protocol), "--bench", "A", "--db", url]),
                  "queue": (hil.queue.main, ["--db", url])}[command]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.err + captured.out
    assert "lab:***@127.0.0.1:1/lab" in captured.err


def test_a_bad_protocol_is_refused_before_any_database_is_touched(tmp_path, capsys):
    protocol = _write(tmp_path, "bad.yaml", BAD)
    # an unreachable server: a refusal that needed it would say so instead of naming the field
    assert hil.submit.main([str(protocol), "--bench", "A", "--db", "postgresql://u:p@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {protocol}:6: steps[0].read_voltage_v: Input should be a valid number (got '0.2')"


# -- against the server ------------------------------------------------------------------------------------------

def test_submit_refuses_a_bad_protocol_with_nothing_queued(postgres_url, tmp_path, capsys):
    good = _write(tmp_path, "read.yaml", READ)
    assert hil.submit.main([str(good), "--bench", "A", "--db", postgres_url]) == 0
    assert capsys.readouterr().out.strip() == "queued job 1 on bench A"
    bad = _write(tmp_path, "bad.yaml", BAD)
    assert hil.submit.main([str(bad), "--bench", "A", "--db", postgres_url]) == 2
    assert "read_voltage_v" in capsys.readouterr().err
    assert _sql(postgres_url, "SELECT count(*) FROM procrastinate_jobs")[0][0] == 1
    assert hil.submit.main([str(good), "--bench", "no spaces", "--db", postgres_url]) == 2
    assert hil.submit.main([str(good), "--bench", "A", "--priority", "5000", "--db", postgres_url]) == 2
    assert _sql(postgres_url, "SELECT count(*) FROM procrastinate_jobs")[0][0] == 1
    # several at once: one bad protocol among them refuses them all; good ones are queued in the order given
    assert hil.submit.main([str(good), str(bad), "--bench", "A", "--db", postgres_url]) == 2
    assert _sql(postgres_url, "SELECT count(*) FROM procrastinate_jobs")[0][0] == 1
    capsys.readouterr()
    assert hil.submit.main([str(good), str(good), "--bench", "A", "--db", postgres_url]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["queued job 2 on bench A", "queued job 3 on bench A"]


def test_cancel_takes_a_queued_run_out_and_refuses_a_running_or_finished_one(postgres_url, tmp_path, capsys):
    protocol = _write(tmp_path, "read.yaml", READ)
    for priority in ("0", "3", "0"):
        assert hil.submit.main([str(protocol), "--bench", "B", "--priority", priority, "--db", postgres_url]) == 0
    capsys.readouterr()
    assert hil.queue.main(["cancel", "1", "--db", postgres_url]) == 0
    assert capsys.readouterr().out.strip() == "cancelled job 1 (read8 on bench B)"
    assert hil.queue.main(["cancel", "1", "--db", postgres_url]) == 1
    assert "job 1 has finished (cancelled)" in capsys.readouterr().err
    _sql(postgres_url, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = 2")     # as a worker takes it
    assert hil.queue.main(["cancel", "2", "--db", postgres_url]) == 1
    assert "job 2 is running on bench B" in capsys.readouterr().err
    assert hil.queue.main(["cancel", "9", "--db", postgres_url]) == 1
    assert "there is no job 9" in capsys.readouterr().err
    assert hil.queue.main(["--db", postgres_url]) == 0
    listing = capsys.readouterr().out
    assert "1 cancelled, 1 running, 1 queued" in listing
    statuses = dict(_sql(postgres_url, "SELECT id, status::text FROM procrastinate_jobs"))
    assert statuses == {1: "cancelled", 2: "doing", 3: "todo"}


def test_the_listing_masks_the_password(postgres_url, tmp_path, capsys):
    from sqlalchemy.engine import make_url
    url = make_url(postgres_url)
    wrong = url.set(password=SECRET).render_as_string(hide_password=False)
    assert hil.queue.main(["--db", wrong]) == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.err + captured.out and "***" in captured.err


class _Bench:
    def __init__(self, name: str, backend: str, resource: str, url: str, log: Path):
        self.name, self.backend, self.resource, self.url, self.log = name, backend, resource, url, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hil.worker", "--bench", self.name, "--backend", self.backend, "--resource",
                 self.resource, "--db", self.url, "--poll", "0.5", "--report-dir", str(self.log.parent / "reports")],
                stdout=log, stderr=log, env=env, cwd=self.log.parent)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_for(predicate, timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_run_left_running_by_another_host_is_resumed_once_the_bench_lease_passes(postgres_url, tmp_path):
    """A bench computer that vanished mid-run: its pid cannot be checked from here, but a worker that holds the
    bench's lease knows nobody else runs the bench's jobs, so the job goes back to the queue and its run,
    marked interrupted, is resumed: one run, its finished steps kept."""
    from db import Database
    from db.models import Run
    from db.runs import QUEUE_JOB_OPTION, start_run, start_step

    protocol = _write(tmp_path, "program.yaml", PROGRAM)
    args = hil.submit.build_parser().parse_args([str(protocol), "--bench", "far", "--db", postgres_url])
    (job_id,), _ = hil.submit.submit(args)
    _sql(postgres_url, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = :job", job=job_id)
    with Database(postgres_url) as db, db.session() as s:       # what the vanished computer had written
        run = start_run(s, protocol_name="program8", protocol_path=str(protocol), protocol_text=PROGRAM,
                        backend="serial", seed=None, code_version="t",
                        options={QUEUE_JOB_OPTION: job_id, "bench": "far"})
        run.owner_host, run.owner_pid = "bench-pc-that-vanished", 4242
        start_step(s, run, 0, "before", "read")
        run_id = run.id
    server = BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=5))).start()
    bench = _Bench("far", "serial", server.url, postgres_url, tmp_path / "far.log")
    try:
        bench.start()
        _wait_for(lambda: _sql(postgres_url, "SELECT status::text FROM procrastinate_jobs WHERE id = :job",
                               job=job_id)[0][0] == "succeeded", what="the job to complete")
    finally:
        bench.stop()
        server.stop()
    with Database(postgres_url) as db, db.session() as s:
        runs = s.query(Run).all()
        assert [r.id for r in runs] == [run_id] and runs[0].status == "completed"
        (resume,) = runs[0].resumes
        assert resume["previous_status"] == "interrupted"
        assert "bench-pc-that-vanished" in resume["previous_error"] and "lease passed" in resume["previous_error"]
        first = [st for st in runs[0].steps if st.index == 0]
        assert [st.status for st in first] == ["interrupted", "completed"]


def test_a_second_worker_of_a_bench_waits_for_the_first(postgres_url, tmp_path):
    server = BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=6))).start()
    first = _Bench("twice", "serial", server.url, postgres_url, tmp_path / "first.log")
    second = _Bench("twice", "serial", server.url, postgres_url, tmp_path / "second.log")
    try:
        first.start()
        _wait_for(lambda: "waiting for runs" in first.log.read_text(), what="the first worker")
        second.start()
        _wait_for(lambda: "holds its lease" in second.log.read_text(), what="the second worker to wait")
        assert "hil.worker twice@" in second.log.read_text()       # who holds it, by name
        protocol = _write(tmp_path, "read.yaml", READ)
        hil.submit.main([str(protocol), "--bench", "twice", "--db", postgres_url])
        _wait_for(lambda: "run 1 completed" in first.log.read_text(), what="the first worker's run")
        first.kill()
        _wait_for(lambda: "waiting for runs" in second.log.read_text(), what="the second worker to take over")
        assert "run " not in second.log.read_text().split("waiting for runs")[0]
    finally:
        first.stop()
        second.stop()
        server.stop()


def test_a_failed_run_retried_from_the_queue_is_resumed_where_it_stopped(postgres_url, tmp_path, capsys):
    """The bench's board drops its connection mid-programming: the run fails and so does its job. Once the
    board is back, ``hil.queue retry`` queues the job again and the worker resumes that run: one run, its
    first step kept from the failed attempt."""
    from db import Database
    from db.models import Run

    server = BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=7)), faults=Faults(disconnect_after=12)).start()
    bench = _Bench("flaky", "serial", server.url, postgres_url, tmp_path / "flaky.log")
    protocol = _write(tmp_path, "program.yaml", PROGRAM)
    job = lambda: _sql(postgres_url, "SELECT status::text FROM procrastinate_jobs WHERE id = 1")[0][0]  # noqa: E731
    try:
        bench.start()
        assert hil.submit.main([str(protocol), "--bench", "flaky", "--db", postgres_url]) == 0
        _wait_for(lambda: job() == "failed", what="the job to fail")
        server.faults = Faults()                                                # the board is back
        capsys.readouterr()
        assert hil.queue.main(["retry", "1", "--db", postgres_url]) == 0
        assert capsys.readouterr().out.strip() == "queued job 1 again (program8 on bench flaky)"
        _wait_for(lambda: job() == "succeeded", what="the job to complete")
    finally:
        bench.stop()
        server.stop()
    assert hil.queue.main(["retry", "1", "--db", postgres_url]) == 1
    assert "only a failed job can be retried" in capsys.readouterr().err
    with Database(postgres_url) as db, db.session() as s:
        (run,) = s.query(Run).all()
        assert run.status == "completed" and [r["previous_status"] for r in run.resumes] == ["failed"]
        assert [(st.index, st.attempt, st.status) for st in run.steps if st.index == 0] == [(0, 1, "completed")]
        assert [st.status for st in run.steps if st.index == 1] == ["failed", "completed"]


# -- many benches, workers killed -------------------------------------------------------------------------------

N_RUNS = 30
KILLS = 7


def _running_run_on(url: str, bench: str) -> bool:
    rows = _sql(url, "SELECT count(*) FROM runs WHERE status = 'running' AND "
                     "CAST(options AS jsonb) ->> 'bench' = :bench", bench=bench)
    return rows[0][0] > 0


def _unfinished_jobs(url: str) -> int:
    return _sql(url, "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")[0][0]


def test_thirty_runs_on_three_benches_with_workers_killed_complete_exactly_once(postgres_url, tmp_path):
    rng = random.Random(20)
    # Added latency makes each run last a second or two on the emulated instruments, long enough to be killed in.
    servers = [BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=1)), faults=Faults(latency_s=0.02)).start(),
               BoardServer(BoardEmulator(SoftwareCrossbar(8, 8, seed=2)), faults=Faults(latency_s=0.02)).start(),
               TspServer(TspInstrument(SoftwareCrossbar(8, 8, seed=3)), faults=Faults(latency_s=0.02)).start()]
    benches = [_Bench("serial-1", "serial", servers[0].url, postgres_url, tmp_path / "serial-1.log"),
               _Bench("serial-2", "serial", servers[1].url, postgres_url, tmp_path / "serial-2.log"),
               _Bench("smu-1", "visa", servers[2].resource, postgres_url, tmp_path / "smu-1.log")]
    protocols = [_write(tmp_path, f"{name}.yaml", content)
                 for name, content in (("read", READ), ("program", PROGRAM), ("checker", CHECKER))]
    submitted: dict[int, tuple[str, str]] = {}
    for i in range(N_RUNS):
        bench, protocol = benches[i % 3].name, protocols[rng.randrange(3)]
        args = hil.submit.build_parser().parse_args([str(protocol), "--bench", bench, "--db", postgres_url,
                                                     "--priority", str(rng.randrange(3))])
        (job_id,), _ = hil.submit.submit(args)
        submitted[job_id] = (bench, protocol.stem)
    kills_mid_run = kills = 0
    try:
        for bench in benches:
            bench.start()
        deadline = time.monotonic() + 150
        while _unfinished_jobs(postgres_url) and time.monotonic() < deadline:
            if kills < KILLS:
                bench = rng.choice(benches)
                # a random moment, most often while the bench is in the middle of a run
                wait_until = time.monotonic() + rng.uniform(0.5, 6)
                while time.monotonic() < wait_until and not (
                        _running_run_on(postgres_url, bench.name) and rng.random() < 0.3):
                    time.sleep(0.1)
                if bench.proc.poll() is None:
                    kills_mid_run += _running_run_on(postgres_url, bench.name)
                    bench.kill()
                    kills += 1
                    time.sleep(rng.uniform(0, 1))
                    bench.start()
            else:
                time.sleep(0.5)
        assert not _unfinished_jobs(postgres_url), "the queue did not drain in time"
    finally:
        for bench in benches:
            bench.stop()
        for server in servers:
            server.stop()
    logs = "\n".join(b.log.read_text(errors="replace")[-3000:] for b in benches)
    assert kills == KILLS and kills_mid_run >= 2, logs

    # every job completed, with exactly one run, completed, on its own bench
    jobs = dict(_sql(postgres_url, "SELECT id, status::text FROM procrastinate_jobs"))
    assert jobs == {job_id: "succeeded" for job_id in submitted}, logs
    runs = _sql(postgres_url, "SELECT id, status, CAST(options AS jsonb) ->> 'queue_job', "
                              "CAST(options AS jsonb) ->> 'bench', protocol_name, resumes FROM runs")
    assert len(runs) == N_RUNS
    by_job = Counter(int(r[2]) for r in runs)
    assert by_job == Counter(submitted.keys())
    assert {r[1] for r in runs} == {"completed"}
    assert {int(r[2]): (r[3], r[4]) for r in runs} == {
        job: (bench, {"read": "read8", "program": "program8", "checker": "checker8"}[stem])
        for job, (bench, stem) in submitted.items()}
    assert sum(1 for r in runs if r[5]) >= 2, "runs killed mid-way were resumed"

    # steps: unique per (run, index, attempt), none left running, the last attempt at each index completed,
    # an earlier one only interrupted (or completed and run again, as a program step a later read needs)
    steps = _sql(postgres_url, "SELECT run_fk, index, attempt, kind, status, started_at, finished_at "
                               "FROM run_steps ORDER BY run_fk, index, attempt")
    assert len({(s[0], s[1], s[2]) for s in steps}) == len(steps)
    assert not [s for s in steps if s[4] == "running"]
    expected_steps = {"read8": 1, "program8": 3, "checker8": 2}
    protocol_of = {r[0]: r[4] for r in runs}
    attempts: dict[tuple[int, int], list] = defaultdict(list)
    for s in steps:
        attempts[(s[0], s[1])].append(s)
    for run_id, name in protocol_of.items():
        indices = sorted(i for (r, i) in attempts if r == run_id)
        assert indices == list(range(expected_steps[name])), (run_id, indices)
    for (run_id, index), tries in attempts.items():
        assert tries[-1][4] == "completed", tries
        for earlier in tries[:-1]:
            assert earlier[4] == "interrupted" or (earlier[4] == "completed" and earlier[3] == "program"), tries

    # one bench, one step at a time: no two steps of a bench overlap in time
    bench_of = {r[0]: r[3] for r in runs}
    per_bench: dict[str, list] = defaultdict(list)
    for s in steps:
        per_bench[bench_of[s[0]]].append(s)
    for bench, rows in per_bench.items():
        rows.sort(key=lambda s: s[5])
        for before, after in zip(rows, rows[1:]):
            assert after[5] >= before[6], (bench, before, after)

    # the records hang together: every row's run and step exist, and a measurement's step is of its run
    for table in ("measurements", "device_results"):
        orphans = _sql(postgres_url, f"SELECT count(*) FROM {table} t LEFT JOIN runs r ON r.id = t.run_fk "
                                     f"LEFT JOIN run_steps s ON s.id = t.step_fk "
                                     f"WHERE r.id IS NULL OR (t.step_fk IS NOT NULL AND "
                                     f"(s.id IS NULL OR s.run_fk <> t.run_fk))")[0][0]
        assert orphans == 0, table
    assert _sql(postgres_url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'")[0][0] == 0
