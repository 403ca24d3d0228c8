"""LocalSystem: runs passes and evaluations in the orchestrator's own process."""

from __future__ import annotations

from pathlib import Path

from ..models import ModelRef
from ..passes.base import PassContext


class LocalSystem:
    def __init__(self, config: dict):
        self.config = config

    def run_pass(self, pass_cls, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        return pass_cls().run(model, config, out_dir, ctx)

    def evaluate(self, model: ModelRef, metrics: list[dict], data_configs: dict, execution_provider: str,
                 reference: dict | None) -> tuple[dict, dict]:
        from ..evaluation.evaluator import evaluate

        return evaluate(model, metrics, data_configs, execution_provider, reference)
