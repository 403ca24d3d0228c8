"""Systems run jobs. One registry: recipe `systems.<name>.type` -> class.

Every system has start(mounts), available_providers(), run_job(job_path, timeout_s, on_log) -> result,
and stop(); `can_run_torch` says whether PyTorch models can be evaluated there.
"""

from .azureml import AzureMLSystem
from .docker import DockerSystem
from .local import LocalSystem
from .venv import VenvSystem

SYSTEMS = {"LocalSystem": LocalSystem, "VenvSystem": VenvSystem, "DockerSystem": DockerSystem,
           "AzureMLSystem": AzureMLSystem}


def make_system(config: dict, name: str):
    return SYSTEMS[config["type"]](config, name)
