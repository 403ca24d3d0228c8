"""The Hugging Face hub: model ids resolved to snapshot folders, the hub token, hub datasets' errors.

A recipe's `input_model.model_path` that is not a local path but looks like a hub id (`org/name`)
is resolved through huggingface_hub to the cached snapshot folder of its revision (downloaded when
the hub can be reached, read from the HF cache when HF_HUB_OFFLINE=1). From there on the model is
that folder: its content hash (the cache key) follows the snapshot, so a new commit is a new model.

The token (`hf_token: true` on a system) is read from HF_TOKEN or the HF token file and handed to
huggingface_hub / datasets calls only: it is never put into a recipe, a job, a cache key or a log.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import RecipeError

# org/name: letters, digits, '-', '_', '.'; no '..' (a path). A bare name (legacy gpt2) is taken for a
# local path: write its org (openai-community/gpt2), so a mistyped folder is never looked up on the hub.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FILE_SUFFIXES = (".onnx", ".gguf", ".bin", ".safetensors", ".pt", ".pth", ".json", ".yaml", ".yml")


def is_hub_id(value, base_dir: Path) -> bool:
    """A string model_path that names no local file or folder and has the shape of a hub id."""
    if not isinstance(value, str) or value.startswith("azureml:") or ".." in value or not _HUB_ID.match(value) \
            or value.lower().endswith(_FILE_SUFFIXES):
        return False
    return not (Path(base_dir) / value).exists()


def hub_token(recipe: dict, where: str) -> str | None:
    """The token when a system sets `hf_token: true` (None otherwise: the libraries' own default)."""
    wanting = [name for name, system in (recipe.get("systems") or {}).items() if system.get("hf_token")]
    if not wanting:
        return None
    from huggingface_hub import get_token

    token = get_token()  # HF_TOKEN, else the token file `hf auth login` / `huggingface-cli login` wrote
    # an AzureMLSystem with keyvault_name reads its token in the job (runner.load_hf_token): no local one needed
    local = [name for name in wanting if not recipe["systems"][name].get("keyvault_name")]
    if not token and local:
        raise RecipeError(f"{where}: systems.{local[0]}.hf_token is true, but no Hugging Face token is set",
                          "export HF_TOKEN=<token>, or run `huggingface-cli login` once (it writes the HF token file)")
    return token or None


def how_to_cache(repo_id: str, revision: str | None) -> str:
    flags = f" --revision {revision}" if revision else ""
    return (f"download it once where the hub can be reached: `huggingface-cli download {repo_id}{flags}` "
            "(it fills the HF cache, ~/.cache/huggingface or $HF_HOME), or point HF_HOME / HF_HUB_CACHE at a cache "
            "that has it")


# Weights of other frameworks a hub repo may carry beside the PyTorch ones: never downloaded.
OTHER_FRAMEWORKS = ["*.h5", "*.msgpack", "tf_model*", "flax_model*", "rust_model.ot", "*.tflite", "coreml/*"]


def resolve_model(repo_id: str, revision: str | None, token: str | None, where: str) -> tuple[Path, str]:
    """(snapshot folder, commit hash) of a hub model: from the cache offline, else downloaded (or
    reused from the cache when the hub is unreachable). One RecipeError naming the fix otherwise."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    named = f"{where}: '{repo_id}'" + (f" (revision {revision})" if revision else "")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, token=token or None,
                                        local_files_only=bool(constants.HF_HUB_OFFLINE), ignore_patterns=OTHER_FRAMEWORKS))
    except GatedRepoError:
        raise RecipeError(f"{named} is a gated model on the Hugging Face hub and the token may not read it",
                          f"accept its terms at https://huggingface.co/{repo_id} and set hf_token: true on a system "
                          "with HF_TOKEN set (or `huggingface-cli login`)") from None
    except RevisionNotFoundError:
        raise RecipeError(f"{named}: the hub model has no revision '{revision}'",
                          "give a branch, tag or commit hash the repository has") from None
    except RepositoryNotFoundError:
        raise RecipeError(f"{named} is neither a local folder nor a model on the Hugging Face hub (or it is private)",
                          "correct model_path; for a private model set hf_token: true on a system") from None
    except HFValidationError as exc:
        raise RecipeError(f"{named} is not a valid hub model id: {str(exc).splitlines()[0]}",
                          "give org/name, or the path of a local model folder") from None
    except (LocalEntryNotFoundError, OSError):  # offline, or no connection, and not in the cache
        state = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        cached = _cached_revisions(Path(constants.HF_HUB_CACHE), repo_id)
        if cached:
            raise RecipeError(f"{named}: this revision of the hub model is not in the Hugging Face cache "
                              f"({constants.HF_HUB_CACHE}; it has {', '.join(cached)}) and {state}",
                              how_to_cache(repo_id, revision) + ", or give one of the cached revisions") from None
        raise RecipeError(f"{named} is not a local folder, and as a hub model it is not in the Hugging Face cache "
                          f"({constants.HF_HUB_CACHE}) and {state}", how_to_cache(repo_id, revision)) from None
    if not (folder / "config.json").is_file() and not any(folder.glob("*.onnx")):
        raise RecipeError(f"{named}: the cached snapshot {folder} has no config.json (an incomplete download?)",
                          how_to_cache(repo_id, revision))
    return folder, folder.name


def _cached_revisions(cache: Path, repo_id: str) -> list[str]:
    """Branch and tag names (refs/) and snapshot commits the hub cache holds for a model repo."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    refs = sorted(p.relative_to(repo / "refs").as_posix() for p in (repo / "refs").rglob("*") if p.is_file())
    commits = sorted(p.name for p in (repo / "snapshots").glob("*") if p.is_dir())
    return refs + [commit[:12] for commit in commits]


def resolve_input_model(spec: dict, recipe: dict, base_dir: Path, where: str) -> None:
    """A hub id in input_model.model_path becomes its snapshot folder; revision becomes the commit.
    `hf_token: true` without a token is refused here whatever the model (hub datasets need it too)."""
    token = hub_token(recipe, where)
    if not is_hub_id(spec.get("model_path"), base_dir):
        if spec.get("revision"):  # never ignored: a local folder has no revisions
            raise RecipeError(f"{where}: input_model.revision '{spec['revision']}' is set, but model_path is not a hub "
                              "model id (org/name)", "drop revision, or give the hub id as model_path")
        return
    folder, commit = resolve_model(spec["model_path"], spec.get("revision"), token, f"{where}: input_model.model_path")
    spec.update(hub_id=spec["model_path"], model_path=str(folder), revision=commit)


def dataset_load_error(name: str, data_name: str, subset: str | None, exc: Exception) -> RecipeError | None:
    """A clear line for a hub dataset that is neither cached nor reachable; None for other errors."""
    from datasets import config

    text = str(exc)
    offline = bool(config.HF_HUB_OFFLINE)
    unreachable = isinstance(exc, ConnectionError) or "Couldn't reach" in text or "Couldn't find cache" in text
    if not unreachable:
        return None
    state = "HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1" if offline else "the hub cannot be reached"
    which = f"'{data_name}'" + (f" (subset '{subset}')" if subset else "")
    cached = text.split("Available configs in the cache:")[-1].strip() if "Available configs" in text else None
    return RecipeError(
        f"data config '{name}': hub dataset {which} is not in the datasets cache ({config.HF_DATASETS_CACHE}) and {state}"
        + (f"; cached subsets: {cached}" if cached else ""),
        f"load it once where the hub can be reached: `python -c \"import datasets; datasets.load_dataset("
        f"'{data_name}'{', ' + repr(subset) if subset else ''})\"` (it fills $HF_DATASETS_CACHE, by default "
        "~/.cache/huggingface/datasets), or point HF_DATASETS_CACHE at a cache that has it")
