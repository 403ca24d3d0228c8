"""AzureML assets as the input model: named in a recipe without contacting Azure, downloaded once.

A recipe's `input_model.model_path` may name a workspace model, a registry model or a datastore
folder. Loading the recipe only parses it into its canonical reference string:

    azureml:<name>:<version>                                         workspace model
    azureml://registries/<registry>/models/<name>/versions/<version> registry model
    azureml://datastores/<datastore>/paths/<path>                    datastore folder
    azureml://subscriptions/<s>/resourcegroups/<g>/workspaces/<w>/models/<name>/versions/<v>
    azureml://subscriptions/<s>/resourcegroups/<g>/workspaces/<w>/datastores/<d>/paths/<p>

(the last two name their workspace: what a resource with its own `azureml_client` becomes).
Models must name a version: an unversioned model is not reproducible and could not key a cache.

fetch_remote_model() downloads the asset with azure-ai-ml into
`<cache_dir>/remote_models/<sha256 of the workspace-qualified reference>/model`, built in a temp
folder and renamed into place, so a download that dies half-way never looks complete; the next run
reuses it without contacting Azure. azure.* is imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import OliveSystemsError

REMOTE_DIR = "remote_models"
META = "reference.json"  # written last, beside (not inside) the model folder
INSTALL_FIX = "pip install 'olive-systems[azureml]'"
PIN_FIX = ('pin a version: {type: azureml_model, name: NAME, version: "1"} or azureml:NAME:1 '
           "(an unversioned model is not reproducible and cannot key the cache)")
FORMS = ("azureml:NAME:VERSION, azureml://registries/REGISTRY/models/NAME/versions/VERSION, "
         "azureml://datastores/DATASTORE/paths/PATH")

_PART = r"[^/:@\s]+"
_WS = rf"azureml://subscriptions/(?P<subscription>{_PART})/resource[gG]roups/(?P<group>{_PART})/workspaces/(?P<workspace>{_PART})"
_PATTERNS = [
    ("model", re.compile(rf"^azureml:(?P<name>{_PART}):(?P<version>{_PART})$")),
    ("registry_model", re.compile(rf"^azureml://registries/(?P<registry>{_PART})/models/(?P<name>{_PART})/versions/(?P<version>{_PART})/?$")),
    ("datastore", re.compile(rf"^azureml://datastores/(?P<datastore>{_PART})/paths/(?P<path>.+)$")),
    ("model", re.compile(rf"^{_WS}/models/(?P<name>{_PART})/versions/(?P<version>{_PART})/?$")),
    ("datastore", re.compile(rf"^{_WS}/datastores/(?P<datastore>{_PART})/paths/(?P<path>.+)$")),
]
# Model references without a pinned version: a bare name, a label (@latest) or a /labels/ path.
_UNPINNED = re.compile(rf"^azureml:(?P<name>{_PART})(@.*)?$|^azureml://.*/models/(?P<other>{_PART})(/labels/[^/]+)?/?$")


@dataclass(frozen=True)
class Asset:
    kind: str  # "model", "registry_model" or "datastore"
    name: str | None = None
    version: str | None = None
    registry: str | None = None
    datastore: str | None = None
    path: str | None = None
    workspace: tuple[str, str, str] | None = None  # (subscription, group, workspace) when the reference names it

    @property
    def reference(self) -> str:
        """The canonical reference string (what a recipe's model_path becomes)."""
        return self.qualified(None)

    def qualified(self, workspace: tuple[str, str, str] | None) -> str:
        """The reference with its workspace spelled out: two workspaces' bert:1 are different models."""
        where = self.workspace or workspace
        prefix = "azureml://subscriptions/{}/resourcegroups/{}/workspaces/{}".format(*where) if where else None
        if self.kind == "registry_model":
            return f"azureml://registries/{self.registry}/models/{self.name}/versions/{self.version}"
        if self.kind == "model":
            return f"{prefix}/models/{self.name}/versions/{self.version}" if prefix else f"azureml:{self.name}:{self.version}"
        return f"{prefix or 'azureml:/'}/datastores/{self.datastore}/paths/{self.path}"

    def describe(self) -> str:
        if self.kind == "datastore":
            return f"datastore path '{self.path}' in datastore '{self.datastore}'"
        where = f" in registry '{self.registry}'" if self.registry else ""
        return f"model '{self.name}' version {self.version}{where}"

    def show_command(self) -> str:
        if self.kind == "registry_model":
            return f"az ml model show -n {self.name} -v {self.version} --registry-name {self.registry}"
        if self.kind == "model":
            return f"az ml model show -n {self.name} -v {self.version} -w <workspace> -g <group>"
        return f"az ml datastore show -n {self.datastore} -w <workspace> -g <group>"


def is_remote(value) -> bool:
    return isinstance(value, str) and value.startswith("azureml:")


def _clean_path(path: str, reference: str) -> str:
    cleaned = path.strip("/")
    if not cleaned or any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise OliveSystemsError(f"'{reference}': datastore path '{path}' is not a folder path",
                                "give the folder's path inside the datastore, e.g. models/bert")
    return cleaned


def parse_reference(reference: str) -> Asset:
    """An `azureml:` reference string -> Asset, or an OliveSystemsError naming the fix. No network."""
    for kind, pattern in _PATTERNS:
        match = pattern.match(reference)
        if match:
            found = match.groupdict()
            where = (found["subscription"], found["group"], found["workspace"]) if found.get("workspace") else None
            path = _clean_path(found["path"], reference) if kind == "datastore" else None
            if kind != "datastore" and found["version"].lower() == "latest":
                break
            return Asset(kind, name=found.get("name"), version=found.get("version"), registry=found.get("registry"),
                         datastore=found.get("datastore"), path=path, workspace=where)
    unpinned = _UNPINNED.match(reference) or re.search(r"/versions/latest/?$|:latest$", reference)
    if unpinned:
        raise OliveSystemsError(f"AzureML model reference '{reference}' has no pinned version", PIN_FIX)
    raise OliveSystemsError(f"'{reference}' is not an AzureML reference olive-systems can use", f"write one of {FORMS}")


def _workspace_identity(workspace: dict | None, base_dir: Path | None = None) -> tuple[str, str, str] | None:
    """(subscription, group, workspace) from explicit keys, else from an AzureML studio config.json."""
    if not workspace:
        return None
    keys = ("subscription_id", "resource_group", "workspace_name")
    if all(workspace.get(key) for key in keys):
        return tuple(str(workspace[key]) for key in keys)
    if workspace.get("config_path"):
        path = Path(workspace["config_path"]).expanduser()
        path = path if path.is_absolute() or base_dir is None else base_dir / path
        if path.is_dir():
            path = path / "config.json"
        try:
            config = json.loads(path.read_text())
            return tuple(str(config[key]) for key in keys)
        except (OSError, ValueError, KeyError) as exc:
            raise OliveSystemsError(f"AzureML workspace config '{path}' is unreadable ({type(exc).__name__}: {exc})",
                                    "download config.json from the workspace's page in AzureML studio") from None
    return None


def reference_of(spec: dict, base_dir: Path | None = None) -> str:
    """A recipe resource {type: azureml_model | azureml_registry_model | azureml_datastore, ...} -> its
    canonical reference. A resource with its own azureml_client names its workspace in the reference."""
    kind = spec.get("type")
    if kind in ("azureml_model", "azureml_registry_model"):
        version = spec.get("version")
        if version is None or str(version).strip() == "" or str(version).lower() == "latest":
            raise OliveSystemsError(f"AzureML model '{spec.get('name')}' has no pinned version", PIN_FIX)
        if kind == "azureml_registry_model":
            return parse_reference(f"azureml://registries/{spec['registry_name']}/models/{spec['name']}/versions/{version}").reference
        asset = parse_reference(f"azureml:{spec['name']}:{version}")
    elif kind == "azureml_datastore":
        asset = parse_reference(f"azureml://datastores/{spec['datastore_name']}/paths/{str(spec['relative_path']).strip('/')}")
    else:
        raise OliveSystemsError(f"unknown AzureML resource type {kind!r}",
                                "use azureml_model, azureml_registry_model or azureml_datastore")
    client = spec.get("azureml_client")
    if client:
        identity = _workspace_identity(client, base_dir)
        if identity is None:
            raise OliveSystemsError("the resource's azureml_client names no workspace",
                                    "give subscription_id, resource_group and workspace_name, or config_path")
        return asset.qualified(identity)
    return asset.reference


def workspace_for(reference: str, recipe: dict) -> dict | None:
    """The workspace a reference is resolved in: None for registry models and references that name
    their workspace; else that of the recipe's AzureMLSystem(s), which must agree."""
    asset = parse_reference(reference)
    if asset.kind == "registry_model" or asset.workspace:
        return None
    from .systems.azureml import AzureMLSystem

    found: dict = {}
    for name, config in recipe.get("systems", {}).items():
        if config.get("type") == "AzureMLSystem":
            workspace = AzureMLSystem(config, name).workspace()
            found.setdefault(_workspace_identity(workspace) or json.dumps(workspace, sort_keys=True), (name, workspace))
    if len(found) > 1:
        names = ", ".join(name for name, _ in found.values())
        raise OliveSystemsError(f"input_model.model_path '{reference}' is a workspace asset, but the AzureMLSystems "
                                f"({names}) use different workspaces",
                                "give the model_path resource its own azureml_client (the workspace that holds it)")
    return next(iter(found.values()))[1] if found else None


def fetch_remote_model(reference: str, cache_dir: Path, workspace: dict | None = None) -> Path:
    """The local folder of an AzureML asset: downloaded once into the cache, then reused offline.

    `workspace` (subscription_id, resource_group, workspace_name or config_path, as
    AzureMLSystem.workspace() gives them) resolves workspace models and datastores whose reference
    does not name its workspace; registry models need none."""
    asset = parse_reference(reference)
    identity = asset.workspace or (None if asset.kind == "registry_model" else _workspace_identity(workspace))
    if asset.kind != "registry_model" and identity is None:
        raise OliveSystemsError(f"'{reference}' is an asset of an AzureML workspace, but no workspace is known",
                                "declare an AzureMLSystem (subscription_id, resource_group, workspace_name or azureml_client) "
                                "in the recipe's systems, or give the model_path resource its own azureml_client")
    qualified = asset.qualified(identity)
    cache_dir = Path(cache_dir).resolve()
    final = cache_dir / REMOTE_DIR / hashlib.sha256(qualified.encode()).hexdigest()
    if (final / META).is_file():
        return final / "model"  # a versioned asset never changes: no Azure call
    if final.exists():  # no META: not a finished download (none is renamed without one); download again
        shutil.rmtree(final, ignore_errors=True)
    tmp_root = cache_dir / "tmp"  # LocalCache.sweep removes what a killed process left here
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-remote-{final.name[:12]}-", dir=tmp_root))
    try:
        mountable = _download(asset, identity, tmp)
        meta = {"reference": reference, "qualified": qualified,
                # what an AzureML job may mount instead of uploading the folder: a folder asset, resolved where jobs run
                "job_input": asset.reference if mountable and asset.workspace is None else None}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / META).is_file():  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "model"


def job_input_reference(folder: Path | str) -> str | None:
    """For a folder fetch_remote_model returned: the reference an AzureML job can take as its model
    input directly (ModelRef.source_reference); None for anything else."""
    meta = Path(folder).parent / META
    if Path(folder).name != "model" or not meta.is_file():
        return None
    return json.loads(meta.read_text()).get("job_input")


# ---- downloads (azure-ai-ml) ----

def _download(asset: Asset, identity: tuple[str, str, str] | None, tmp: Path) -> bool:
    """Fill tmp/model; True when the asset is a folder (an AzureML job mounts it as the same folder)."""
    try:
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise OliveSystemsError("azure-ai-ml is not installed", INSTALL_FIX) from None
    credential = DefaultAzureCredential()
    try:
        if asset.kind == "registry_model":
            client = MLClient(credential, registry_name=asset.registry)
        else:
            client = MLClient(credential, *identity)
        if asset.kind == "datastore":
            return _download_datastore(client, credential, asset, tmp / "model")
        client.models.download(name=asset.name, version=asset.version, download_path=str(tmp / "download"))
    except OliveSystemsError:
        raise
    except Exception as exc:
        raise _fetch_error(exc, asset) from None
    # models.download writes <path>/<name>/<folder>/... for a folder asset, <path>/<name>/<file> for a file.
    downloaded = tmp / "download" / asset.name
    entries = list(downloaded.iterdir()) if downloaded.is_dir() else []
    if not entries:
        raise OliveSystemsError(f"AzureML {asset.describe()} downloaded no files", f"check the asset ({asset.show_command()})")
    if len(entries) == 1 and entries[0].is_dir():
        os.rename(entries[0], tmp / "model")
        return True
    os.rename(downloaded, tmp / "model")
    return False


def _download_datastore(client, credential, asset: Asset, dest: Path) -> bool:
    """Every blob under the datastore path, read with the same DefaultAzureCredential (no datastore secrets)."""
    from azure.storage.blob import ContainerClient

    store = client.datastores.get(asset.datastore)
    container = getattr(store, "container_name", None) or getattr(store, "filesystem", None)
    if not container or not getattr(store, "account_name", None):
        raise OliveSystemsError(f"AzureML datastore '{asset.datastore}' is a {getattr(store, 'type', 'non-blob')} datastore",
                                "put the model in an Azure Blob or ADLS Gen2 datastore (e.g. workspaceblobstore)")
    url = f"https://{store.account_name}.blob.{getattr(store, 'endpoint', None) or 'core.windows.net'}"
    blobs = ContainerClient(url, container, credential=credential)
    prefix, count = asset.path + "/", 0
    root = dest.resolve()
    for blob in blobs.list_blobs(name_starts_with=prefix, include=["metadata"]):
        if (blob.metadata or {}).get("hdi_isfolder") == "true":  # an ADLS Gen2 directory marker
            continue
        target = (dest / blob.name[len(prefix):]).resolve()
        if target == root or not target.is_relative_to(root):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            blobs.download_blob(blob.name).readinto(out)
        count += 1
    if count == 0:
        raise OliveSystemsError(f"AzureML {asset.describe()} holds no files",
                                f"check datastore_name and relative_path ({asset.show_command()})")
    return True


def _fetch_error(exc: Exception, asset: Asset) -> OliveSystemsError:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    from .systems.azureml import _first_line, map_failure

    if isinstance(exc, ResourceNotFoundError):
        return OliveSystemsError(f"AzureML {asset.describe()} not found: {_first_line(exc)}",
                                 f"check the name and version exist ({asset.show_command()}) and pin an existing version")
    if isinstance(exc, HttpResponseError) and getattr(exc, "status_code", None) == 403:
        return OliveSystemsError(f"AzureML denied reading {asset.describe()}: {_first_line(exc)}",
                                 "give your identity read access (AzureML Data Scientist on the workspace; "
                                 "Storage Blob Data Reader on a datastore's storage account)")
    return map_failure(exc)
