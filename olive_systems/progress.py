"""Live progress of passes and evaluations, and the final table of candidates (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

MARKS = {"done": "[green]✓[/]", "cached": "[cyan]↺[/]", "failed": "[red]✗[/]", "warning": "[yellow]![/]"}


class Progress:
    def __init__(self, verbose: bool = False):
        self.console = Console(stderr=True)
        self.verbose = verbose
        self.status = None

    def __enter__(self):
        self.status = self.console.status("reading the recipe")
        self.status.start()
        return self

    def __exit__(self, *exc):
        self.status.stop()

    def on_event(self, event: dict) -> None:
        kind, name = event["kind"], event["name"]
        if kind == "start":
            self.status.update(f"{event['step']}: {name}")
        elif kind in ("done", "cached"):
            seconds = f"{event['seconds']:.1f}s" if kind == "done" else (
                "from the shared cache" if event.get("source") == "shared" else "from cache")
            metrics = event.get("metrics")
            shown = "  " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()) if metrics else ""
            self.console.print(f"{MARKS[kind]} {event['step']:<10} {name}  [dim]{seconds}[/]{shown}")
        elif kind == "failed":
            self.console.print(f"{MARKS['failed']} {name}: {event['error']}")
        elif kind == "warning":
            self.console.print(f"{MARKS['warning']} {name}")
        elif kind == "log" and (self.verbose or "warning" in event["message"] or "fused" in event["message"]):
            self.console.print(f"  [dim]{name}: {event['message']}[/]")


def print_summary(output) -> None:
    console = Console(width=max(Console().width, 140))
    models = output.get_output_models()
    keys = list(dict.fromkeys(k for m in models for k in m.metrics))
    table = Table(title="candidates (rank 1 is best)")
    table.add_column("rank", justify="right")
    table.add_column("model", overflow="fold")
    table.add_column("goals")
    table.add_column("front", justify="center")  # ★: on the Pareto front of the priority metrics
    for key in keys:
        table.add_column(key.replace("-", "\n", 1), justify="right")
    if output.input_model_metrics:
        table.add_row("", "[dim]input model[/]", "", "", *(f"{output.input_model_metrics.get(k, {}).get('value', float('nan')):.4g}" for k in keys))
    for model in models:
        goals = "[green]met[/]" if model.meets_goals else "[red]missed[/]"
        table.add_row(str(model.rank), model.model_id, goals, "★" if model.pareto else "", *(f"{model.metrics[k]['value']:.4g}" if k in model.metrics else "" for k in keys))
    console.print(table)
    for failure in output.failures:
        console.print(f"[red]failed[/] {failure['model_id']}: {failure['error']}" + (f" (fix: {failure['fix']})" if failure.get("fix") else ""))
    computed = sum(not step["cached"] for step in output.steps)
    shared = sum(step.get("source") == "shared" for step in output.steps)
    console.print(f"{len(output.steps)} steps: {len(output.steps) - computed} from cache ({shared} from the shared cache), "
                  f"{computed} computed. Output: {output.output_dir}")
