"""Systems run pass and evaluation work. One registry: recipe `systems.<name>.type` -> class."""

from .local import LocalSystem

SYSTEMS = {"LocalSystem": LocalSystem}


def make_system(config: dict):
    return SYSTEMS[config["type"]](config)
