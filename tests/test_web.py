"""The web view through Flask's test client: what each page shows of a real history, what it refuses,
that it reads without ever writing, and that a bench writing meanwhile is neither blocked nor broken."""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

import web_data
from conftest import BACKENDS
from db import Database
from db import history as history_queries
from db.runs import set_run_progress
from hil.web.app import create_app
from hil.web.live import live_state


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    return web_data.build(tmp_path_factory.mktemp("web"))


@pytest.fixture
def client(history):
    db = Database(history["url"], read_only=True)
    yield create_app(db).test_client()
    db.close()


def page(client, path: str, status: int = 200) -> str:
    reply = client.get(path)
    assert reply.status_code == status, (path, reply.status_code, reply.data[:300])
    return reply.data.decode()


def test_every_page_of_a_real_history_loads(client, history):
    runs = page(client, "/runs")
    for run_id in (1, 2, history["loop"], history["failed"], history["running"]):
        assert f'href="/runs/{run_id}"' in runs
    assert re.findall(r'href="/runs/\d+"', page(client, "/")) == re.findall(r'href="/runs/\d+"', runs)
    array = page(client, f"/arrays/{web_data.ARRAY}")
    # the calibration's device maps and the loop's accuracy, drawn by plotly from figure JSON
    assert set(re.findall(r'data-plot="([\w-]+)"', array)) == {"map-yield", "map-window", "map-stuck", "loop-plot"}
    assert "Predictive checks" in array and "read_noise" in array
    assert web_data.ARRAY in page(client, "/arrays")
    trend = page(client, f"/arrays/{web_data.ARRAY}/trend?quantity=yield")
    assert 'data-plot="trend-plot"' in trend and trend.count('href="/runs/') >= 2
    png = client.get(f"/arrays/{web_data.ARRAY}/trend.png?quantity=yield")
    assert png.status_code == 200 and png.data.startswith(b"\x89PNG")
    calibration = page(client, "/runs/1")
    assert "report" in calibration and "window.after_set" in calibration
    report = page(client, "/runs/1/report/0/")
    for figure in re.findall(r'<img src="([^"]+)"', report):
        assert client.get(f"/runs/1/report/0/{figure}").data.startswith(b"\x89PNG")
    loop = page(client, f"/runs/{history['loop']}")
    assert "92.5 %" in loop and "95.0 %" in loop             # on the array, digital
    assert client.get("/static/plotly.min.js").data.startswith(b"/**")


def test_two_noise_models_side_by_side(client):
    html = page(client, f"/arrays/{web_data.ARRAY}/models?a=1&b=2")
    rows = re.findall(r"<tr><td>([\w.\[\]]+)</td><td>([^<]*)</td><td>([^<]*)</td>", html)
    params = {name: (a, b) for name, a, b in rows}
    assert "read.relative" in params and "window.g_max_s" in params
    # two calibrations of one chip (different seeds of the same device): close, not identical
    a, b = (float(x) for x in params["read.relative"])
    assert a != b and abs(a - b) < 0.5 * a


def test_a_failed_run_shows_its_error_and_how_to_resume_it(client, history):
    live = page(client, f"/runs/{history['failed']}/live")
    assert web_data.FAILURE in live
    assert f"python -m hil.run --resume {history['failed']}" in live
    assert 'data-live="0"' in live          # nothing to poll for


def test_a_running_run_shows_where_it_is_and_when_its_step_should_end(client, history):
    web_data.advance(history["url"], history["running"], 6)
    live = page(client, f"/runs/{history['running']}/live")
    assert 'data-live="1"' in live and "step 1/2 noisy: training" in live and "6/30 epochs" in live
    assert re.search(r'<progress id="step-progress" max="1" value="0.2000">', live)
    assert page(client, f"/api/runs/{history['running']}").count('"fraction"') == 1


def test_the_step_estimate_is_right_for_a_step_that_keeps_its_pace():
    """A step doing 30 epochs at 4 s each, watched at epoch 9: the estimate is the 84 s it has left."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    now = start + timedelta(seconds=36)
    row = {"id": 7, "status": "running", "started_at": start - timedelta(seconds=5), "finished_at": None,
           "error": None, "step_index": 1, "step_name": "noisy", "step_started_at": start,
           "progress": {"stage": "training", "done": 9, "total": 30, "steps": 3, "updated_at": now.isoformat()}}
    state = live_state(row, now)
    assert state["step_eta_s"] == pytest.approx(21 * 4) and state["elapsed_s"] == pytest.approx(41)
    assert state["step"] == "2/3 noisy" and state["quiet_s"] is None
    quiet = live_state({**row, "progress": {**row["progress"], "updated_at": start.isoformat()}},
                       now + timedelta(minutes=10))
    assert quiet["quiet_s"] == pytest.approx(636)
    # no total: no estimate rather than a guess
    assert live_state({**row, "progress": {"stage": "settling"}}, now)["step_eta_s"] is None


@pytest.mark.parametrize("path, status, message", [
    ("/runs/999", 404, "there is no run 999"),
    ("/arrays/chip-Z", 404, "chip-Z"),
    ("/runs?status=bogus", 400, "unknown status"),
    ("/arrays/mock-16x16-seed0/trend", 400, "quantity"),
    ("/arrays/mock-16x16-seed0/models?a=1&b=x", 400, "must be a int"),
    ("/arrays/mock-16x16-seed0/models?a=1&b=99", 404, "no noise model 99"),
    ("/runs/4/report/0/", 404, "wrote no report"),
    ("/runs/1/report/0/../../../../etc/passwd", 404, ""),
])
def test_bad_requests_get_one_clear_line(client, path, status, message):
    assert message in page(client, path, status)


def test_the_view_never_writes(history, tmp_path):
    db = Database(history["url"], read_only=True)
    with pytest.raises(OperationalError, match="readonly"):
        with db.session() as session:
            session.execute(text("UPDATE runs SET status = 'failed'"))
    db.close()
    # a database it cannot read as this version's is refused, not migrated
    with pytest.raises(Exception, match="no database"):
        Database(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True)


def test_credentials_never_reach_a_page(history):
    engine = create_engine(history["url"])
    db = Database.from_engine(engine, url="postgresql+psycopg://lab:s3cret-pw@db.lab:5432/hil")
    html = create_app(db).test_client().get("/runs").data.decode()
    assert "s3cret-pw" not in html and "db.lab" in html
    engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bench_writing_while_the_view_reads_is_not_blocked(backend, request):
    """A writer records progress every few milliseconds while four threads load pages: every write
    lands, none fails, and every page a reader saw is whole (SQLite in WAL mode, and PostgreSQL)."""
    if backend == "sqlite":
        history = request.getfixturevalue("history")
        url, run_id, array = history["url"], history["running"], web_data.ARRAY
    else:
        url = request.getfixturevalue("postgres_url")
        with Database(url) as db, db.session() as session:
            failed = web_data.add_failed_run(session)
            run_id, array = web_data.add_running_run(session, failed.crossbar_array).id, "chip-W"
    db = Database(url, read_only=True)
    client = create_app(db).test_client()
    stop, failures, writes = threading.Event(), [], [0]

    def writer():
        with Database(url) as bench:
            epoch = 0
            while not stop.is_set():
                epoch += 1
                try:
                    with bench.session() as session:
                        set_run_progress(session, run_id, step_index=0, step_name="noisy",
                                         progress={"stage": "training", "done": epoch, "total": 10 ** 6})
                except Exception as exc:          # noqa: BLE001 - any failure of the bench is the finding
                    failures.append(repr(exc))
                    return
                writes[0] = epoch
                time.sleep(0.002)

    def reader():
        for _ in range(15):
            for path in ("/runs", f"/runs/{run_id}/live", f"/arrays/{array}"):
                reply = client.get(path)
                if reply.status_code != 200 or not reply.data.rstrip().endswith((b"</html>", b"</section>")):
                    failures.append(f"{path}: {reply.status_code}")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert not failures and writes[0] > 10
    with db.session() as session:
        assert history_queries.run_live(session, [run_id])[run_id]["progress"]["done"] == writes[0]
    db.close()
    if backend == "sqlite":
        web_data.advance(url, run_id, 1)


def test_a_read_only_role_on_postgresql_suffices(postgres_url, tmp_path):
    """The README's viewer role: SELECT on the schema and nothing else. The view works under it, and the
    role cannot write even if asked to."""
    with Database(postgres_url) as db, db.session() as session:
        web_data.add_failed_run(session)
    admin = create_engine(postgres_url, poolclass=NullPool)
    role, password = "hil_viewer_test", "viewer-pw"
    with admin.begin() as c:
        c.execute(text(f"DROP ROLE IF EXISTS {role}"))
        c.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        c.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        c.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    viewer_url = re.sub(r"://[^@]+@", f"://{role}:{password}@", postgres_url)
    try:
        with Database(viewer_url, read_only=True) as db:
            client = create_app(db).test_client()
            assert web_data.FAILURE in page(client, "/runs/1/live") and "viewer-pw" not in page(client, "/runs")
        plain = create_engine(viewer_url, poolclass=NullPool)
        with pytest.raises(ProgrammingError, match="permission denied"):
            with plain.begin() as c:
                c.execute(text("UPDATE runs SET status = 'completed'"))
        plain.dispose()
    finally:
        with admin.begin() as c:
            c.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}"))
            c.execute(text(f"REVOKE ALL ON SCHEMA public FROM {role}"))
            c.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


def test_the_queue_page_says_why_there_is_none_on_sqlite(client):
    assert "the queue needs PostgreSQL" in page(client, "/queue")


def test_the_queue_page_lists_queued_work_with_its_bench(postgres_url, tmp_path):
    import hil.submit

    protocol = tmp_path / "cal.yaml"
    protocol.write_text(web_data.CALIBRATION, encoding="utf-8")
    with Database(postgres_url) as db:
        client = create_app(db).test_client()
        assert "nothing has been queued" in page(client, "/queue")
        for bench, priority in (("bench-A", 0), ("bench-B", 5)):
            assert hil.submit.main([str(protocol), "--bench", bench, "--priority", str(priority),
                                    "--db", postgres_url]) == 0
    with Database(postgres_url, read_only=True) as viewer:
        html = page(create_app(viewer).test_client(), "/queue/table")
    rows = re.findall(r'<tr data-job="(\d+)"><td>\d+</td><td>([\w-]+)</td><td>([\w_]+)</td>\s*<td><span class="badge '
                      r'(\w+)">\w+</span></td><td>(-?\d+)</td>', html)
    assert [(bench, name, status, int(p)) for _, bench, name, status, p in rows] == [
        ("bench-B", "web_calibration", "queued", 5), ("bench-A", "web_calibration", "queued", 0)]
    assert 'data-live="1"' in html


def test_a_devices_history_from_its_cell(client):
    html = page(client, f"/arrays/{web_data.ARRAY}/device?row=3&col=5")
    table = html[html.index('id="device-history"'):]
    values = re.findall(r"<td>(g_max_s|g_min_s)</td><td>([^<]+)</td>", table)
    assert {q for q, _ in values} == {"g_max_s", "g_min_s"} and len(values) == 4        # two calibrations
    assert len(re.findall(r'data-plot="device-\d+"', html)) >= 2
    assert "outside array" in page(client, f"/arrays/{web_data.ARRAY}/device?row=16&col=0", 400)
