"""The table printed at the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .runner import RunOutcome

_STATUS_STYLE = {"completed": "green", "failed": "bold red", "interrupted": "yellow"}


def print_summary(outcome: RunOutcome, protocol_name: str, db_label: str, console: Console) -> None:
    table = Table(title=f"run {outcome.run_id} · {protocol_name}", title_justify="left")
    for column, justify in (("step", "left"), ("kind", "left"), ("cells in tolerance", "right"),
                            ("iterations", "right"), ("instrument calls", "right"), ("time", "right")):
        table.add_column(column, justify=justify, no_wrap=True)
    for step in outcome.steps:
        report = step.report
        name = step.name if step.attempt == 1 or step.restored else f"{step.name} (attempt {step.attempt})"
        calls, seconds = ("", "earlier") if step.restored else (str(step.transactions), f"{step.seconds:.2f} s")
        table.add_row(name, step.kind, report.cells if report else "", report.iterations if report else "",
                      calls, seconds)
    console.print(table)
    for step in outcome.steps:
        if step.report and step.report.detail:
            console.print(f"  {step.name}: {step.report.detail}", highlight=False)
    style = _STATUS_STYLE.get(outcome.status, "")
    console.print(f"status: [{style}]{outcome.status}[/] in {outcome.seconds:.2f} s · run {outcome.run_id} "
                  f"in {db_label}", highlight=False)
    if outcome.error:
        console.print(f"[bold red]error:[/] {outcome.error}", highlight=False)
