"""The web view: a Flask application over a read-only database.

Flask (with its Jinja2 templates) because the view is a handful of server-rendered pages over
synchronous SQLAlchemy queries: a WSGI framework needs no async bridge, and Flask is small, well kept
and widely known. Pages that change while a run goes re-fetch a fragment of themselves every two
seconds (static/live.js); plots a person zooms are plotly (its JavaScript served from the installed
package, so nothing is fetched from the internet), the rest matplotlib PNG.

Every request reads in a short transaction of its own on a connection that refuses writes
(``Database(read_only=True)``); SQLite in WAL mode lets it read while a bench writes.
"""

from __future__ import annotations

import math
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from flask import Flask, Response, render_template, request, send_from_directory, url_for

from db import Database, history, records
from db.errors import mask_url
from db.jsonable import jsonable
from db.models import STATUSES
from hil.progress import duration
from hil.web import plots
from hil.web.live import live_state, now_utc

PAGE_SIZE = 50
REFRESH_MS = 2000


def create_app(db: Database) -> Flask:
    app = Flask(__name__)
    app.jinja_env.filters.update(duration=_duration, when=_when, number=_number, percent=_percent)
    app.jinja_env.globals.update(REFRESH_MS=REFRESH_MS, database=mask_url(db.url))

    @app.errorhandler(LookupError)
    def not_found(exc: LookupError):
        return render_template("error.html", message=str(exc).strip("'\"")), 404

    @app.errorhandler(ValueError)
    def bad_request(exc: ValueError):
        return render_template("error.html", message=str(exc)), 400

    @app.get("/")
    def index():
        return runs()

    @app.get("/runs")
    def runs():
        return render_template("runs.html", **_runs_context())

    @app.get("/runs/table")
    def runs_table():
        return render_template("_runs_table.html", **_runs_context())

    @app.get("/runs/<int:run_id>")
    def run(run_id: int):
        with db.session() as session:
            info = history.get_run(session, run_id)
            steps = history.run_steps(session, run_id)
            inferences = records.run_inferences(session, run_id)
            finetunes = history.run_finetunes(session, run_id)
            measurements = [{k: m[k] for k in ("step_name", "attempt", "name", "kind", "unit", "shape")}
                            for m in history.run_measurements(session, run_id)]
            stats = history.run_device_stats(session, run_id)
            live = _live(session, [run_id])[run_id]
        maps = _run_maps(stats)
        return render_template("run.html", run=info, run_id=run_id, steps=steps, inferences=inferences, finetunes=finetunes,
                               measurements=measurements, live=live, maps=maps)

    @app.get("/runs/<int:run_id>/live")
    def run_live(run_id: int):
        with db.session() as session:
            history.get_run(session, run_id)           # LookupError -> 404
            live = _live(session, [run_id])[run_id]
        return render_template("_run_live.html", run_id=run_id, live=live)

    @app.get("/runs/<int:run_id>/report/<int:index>/")
    def report(run_id: int, index: int):
        path = _report_path(run_id, index)
        from markdown_it import MarkdownIt

        # relative figure links resolve against this page's URL: serve them from the report's folder
        html = MarkdownIt("commonmark").enable("table").render(path.read_text(encoding="utf-8"))
        return render_template("report.html", run_id=run_id, index=index, path=str(path), html=html)

    @app.get("/runs/<int:run_id>/report/<int:index>/<path:name>")
    def report_file(run_id: int, index: int, name: str):
        return send_from_directory(_report_path(run_id, index).parent, name)

    def _report_path(run_id: int, index: int) -> Path:
        """The report a step of the run wrote, where the run wrote it (on this computer only)."""
        with db.session() as session:
            steps = [s for s in history.run_steps(session, run_id) if s["index"] == index]
        if not steps:
            raise LookupError(f"run {run_id} has no step {index + 1}")
        written = (steps[-1]["summary"] or {}).get("report")
        if not written:
            raise LookupError(f"step {index + 1} of run {run_id} wrote no report")
        path = Path(written)
        if not path.is_file():
            raise LookupError(f"the report of step {index + 1} of run {run_id} was written to {path}, which is not "
                              "on this computer")
        return path

    @app.get("/arrays")
    def arrays():
        with db.session() as session:
            rows = history.list_arrays(session)
        return render_template("arrays.html", arrays=rows)

    @app.get("/arrays/<array_id>")
    def array(array_id: str):
        with db.session() as session:
            quantities = history.array_quantities(session, array_id)
            models = history.list_noise_models(session, array_id=array_id)
            try:
                checks = history.calibration_checks(session, array_id)
            except LookupError:
                checks = []
            loop = history.array_inferences(session, array_id)
            recent = history.list_runs(session, array_id=array_id, limit=20)
            try:
                stats, maps_run = records.latest_device_map(
                    session, array_id, ["g_min_s", "g_max_s", "stuck_on", "stuck_off", "unreadable"])
            except LookupError:
                stats, maps_run = {}, None
        maps = [(name, plots.heatmap(name, grid, f"{name} (run {maps_run})"))
                for name, grid in plots.device_maps(stats).items()]
        return render_template("array.html", array_id=array_id, quantities=quantities, models=models,
                               checks=checks, loop=loop, loop_plot=plots.loop_accuracy(loop) if loop else None,
                               recent=recent, maps=maps, maps_run=maps_run)

    @app.get("/arrays/<array_id>/device")
    def device(array_id: str):
        row, col = _required("row", int), _required("col", int)
        with db.session() as session:
            rows = history.device_history(session, array_id, row, col)     # ValueError outside the array
        by_quantity: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_quantity.setdefault(r["quantity"], []).append(r)
        figures = [(q, plots.trend(points, q, None)) for q, points in by_quantity.items()]
        return render_template("device.html", array_id=array_id, row=row, col=col, rows=rows, figures=figures)

    @app.get("/arrays/<array_id>/trend")
    def trend(array_id: str):
        quantity = _required("quantity")
        with db.session() as session:
            rows = history.array_trend(session, array_id, quantity)
        unit = next((r["unit"] for r in rows if r.get("unit")), None)
        return render_template("trend.html", array_id=array_id, quantity=quantity, rows=rows,
                               plot=plots.trend(rows, quantity, unit) if rows else None)

    @app.get("/arrays/<array_id>/trend.png")
    def trend_png(array_id: str):
        from hil.history import trend_figure

        quantity = _required("quantity")
        with db.session() as session:
            rows = history.array_trend(session, array_id, quantity)
        if not rows:
            raise LookupError(f"array {array_id!r} has no recorded {quantity!r}")
        return Response(plots.png(trend_figure(rows, quantity, array_id)), mimetype="image/png")

    @app.get("/arrays/<array_id>/models")
    def models(array_id: str):
        a, b = _required("a", int), _required("b", int)
        with db.session() as session:
            known = {m["id"] for m in history.list_noise_models(session, array_id=array_id)}
            for model_id in (a, b):
                if model_id not in known:
                    raise LookupError(f"array {array_id!r} has no noise model {model_id}")
            rows = history.compare_noise_models(session, a, b)
        return render_template("models.html", array_id=array_id, a=a, b=b, rows=rows)

    @app.get("/queue")
    def queue():
        return render_template("queue.html", **_queue_context())

    @app.get("/queue/table")
    def queue_table():
        return render_template("_queue_table.html", **_queue_context())

    def _queue_context() -> dict[str, Any]:
        """The lab queue's jobs with their runs; none (and why) on a database that has no queue."""
        from hil import lab_queue

        try:
            lab_queue.postgres_url(db.url)
        except lab_queue.QueueError as exc:   # a database without a queue says why
            return {"work": None, "why": str(exc)}
        try:
            work = lab_queue.list_work(db.url) if lab_queue.schema_present(db.url) else None
        except Exception as exc:            # noqa: BLE001 - shown on the page, credentials removed
            return {"work": None, "why": lab_queue.describe_error(exc, db.url)}
        if work is None:
            return {"work": None, "why": "nothing has been queued in this database yet (python -m hil.submit)"}
        with db.session() as session:
            lab_queue.attach_runs(session, work)
        work.reverse()                       # newest first, as the runs
        return {"work": work, "why": None}

    @app.get("/api/runs")
    def api_runs():
        context = _runs_context()
        return jsonable({"total": context["total"], "page": context["page"], "runs": context["runs"]})

    @app.get("/api/runs/<int:run_id>")
    def api_run(run_id: int):
        with db.session() as session:
            info = history.get_run(session, run_id)
            live = _live(session, [run_id])[run_id]
        return jsonable({**info, "live": live})

    @app.get("/static/plotly.min.js")
    def plotly_js():
        return Response(_plotly_js(), mimetype="text/javascript", headers={"Cache-Control": "max-age=86400"})

    def _runs_context() -> dict[str, Any]:
        status = request.args.get("status") or None
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of: {', '.join(STATUSES)}")
        page = max(_optional("page", int, 1), 1)
        with db.session() as session:
            total = history.count_runs(session, status=status)
            rows = history.list_runs(session, status=status, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
            live = _live(session, [r["id"] for r in rows])
        for row in rows:
            row["live"] = live[row["id"]]
        return {"runs": rows, "total": total, "page": page, "pages": max(math.ceil(total / PAGE_SIZE), 1),
                "status": status, "statuses": STATUSES, "table_url": url_for("runs_table", status=status, page=page)}

    return app


def _live(session, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    now = now_utc()
    return {run_id: live_state(row, now) for run_id, row in history.run_live(session, run_ids).items()}


def _run_maps(stats: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The device maps of the last step of a run that recorded per-device statistics."""
    if not stats:
        return []
    last = max((s["step_index"] if s["step_index"] is not None else -1, s["attempt"] or 0) for s in stats)
    grids = {s["quantity"]: s["values"] for s in stats
             if (s["step_index"] if s["step_index"] is not None else -1, s["attempt"] or 0) == last}
    return [(name, plots.heatmap(name, grid, name)) for name, grid in plots.device_maps(grids).items()]


def _required(name: str, kind: type = str) -> Any:
    value = request.args.get(name)
    if value in (None, ""):
        raise ValueError(f"the query parameter {name!r} is missing")
    return _convert(name, value, kind)


def _optional(name: str, kind: type, default: Any) -> Any:
    value = request.args.get(name)
    return default if value in (None, "") else _convert(name, value, kind)


def _convert(name: str, value: str, kind: type) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"the query parameter {name!r} must be a {kind.__name__}, got {value!r}") from None


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else duration(seconds)


def _when(moment: datetime | None) -> str:
    return "" if moment is None else history.as_utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"
