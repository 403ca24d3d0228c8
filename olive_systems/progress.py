"""Live progress of passes and evaluations, and the final table of candidates (rich)."""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.table import Table

MARKS = {"done": "[green]✓[/]", "cached": "[cyan]↺[/]", "failed": "[red]✗[/]", "warning": "[yellow]![/]"}
SOURCES = {"shared": "from the shared cache", "this run": "reused in this run"}
HEARTBEAT_S = 30.0  # without a terminal, a step running longer than this says so every HEARTBEAT_S


class _Running:
    """The steps in flight with their elapsed time and any progress they report: the live status line."""

    def __init__(self):
        self.steps: dict[str, dict] = {}
        self.lock = threading.Lock()

    def start(self, step: str, name: str) -> None:
        with self.lock:
            self.steps[name] = {"step": step, "started": time.monotonic(), "progress": ""}

    def progress(self, name: str, text: str) -> None:
        with self.lock:
            if name in self.steps:
                self.steps[name]["progress"] = text

    def end(self, name: str) -> None:
        with self.lock:
            self.steps.pop(name, None)

    def lines(self) -> list[str]:
        now = time.monotonic()
        with self.lock:
            return [f"{s['step']}: {name} {now - s['started']:.0f}s" + (f" ({s['progress']})" if s["progress"] else "")
                    for name, s in self.steps.items()]

    def __rich__(self) -> str:
        return "  ·  ".join(self.lines()) or "working"


class Progress:
    def __init__(self, verbose: bool = False):
        # soft_wrap: a metric line piped to a file or CI log stays one line instead of wrapping at 80 columns.
        self.console = Console(stderr=True, soft_wrap=True)
        self.verbose = verbose
        self.running = _Running()
        self.status = None
        self._stop = threading.Event()

    def __enter__(self):
        self.status = self.console.status(self.running)
        self.status.start()
        if not self.console.is_terminal:  # no live line without a terminal: a heartbeat instead
            threading.Thread(target=self._heartbeat, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.status.stop()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for line in self.running.lines():
                self.console.print(f"… {line}", highlight=False)

    def on_event(self, event: dict) -> None:
        kind, name = event["kind"], event["name"]
        if kind == "start":
            self.running.start(event["step"], name)
        elif kind == "progress":  # a long step (timing, tuning) reporting how far it is
            self.running.progress(name, event["message"])
        elif kind in ("done", "cached"):
            self.running.end(name)
            seconds = f"{event['seconds']:.1f}s" if kind == "done" else SOURCES.get(event.get("source"), "from cache")
            metrics = event.get("metrics")
            shown = "  " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()) if metrics else ""
            self.console.print(f"{MARKS[kind]} {event['step']:<10} {name}  [dim]{seconds}[/]{shown}")
        elif kind == "ended":  # a started step that failed: its failure is told with its candidate
            self.running.end(name)
        elif kind == "failed":
            self.console.print(f"{MARKS['failed']} {name}: {event['error']}")
        elif kind == "warning":
            self.console.print(f"{MARKS['warning']} {name}")
        elif kind == "log" and (self.verbose or "warning" in event["message"] or "fused" in event["message"]):
            message = event["message"]
            message = message[len(name) + 2:] if message.startswith(f"{name}: ") else message  # the job already named it
            self.console.print(f"  [dim]{name}: {message}[/]")


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
