"""Build a real, offline Hugging Face cache on disk: what `huggingface-cli download` and an online
`datasets.load_dataset` leave behind, made here from local files (no network, no mocks).

API (every function takes the cache root, a folder of the test's own; nothing global is touched):

* add_hub_model(root, "org/name", folder, revision="main") -> commit
      The model folder as a hub model repo in the hub cache layout:
      ROOT/hub/models--org--name/{blobs/<sha256>, snapshots/<commit>/<files -> blobs>, refs/<revision>}.
      The commit is derived from the files, so other files give another commit; adding the same repo
      again with other files moves refs/<revision> to the new snapshot (the old one stays, as in a
      real cache), and a 40-hex revision only adds the snapshot.
* add_glue_mrpc(root, rows=None) -> commit
      A small glue/mrpc-like dataset (sentence1, sentence2, label, idx; splits train, validation,
      test) as the hub dataset repo `nyu-mll/glue` (parquet files under mrpc/, README.md with its
      `configs:`) in the hub cache, and prepared in the datasets cache exactly as an online
      `load_dataset("glue", "mrpc")` leaves it, so that offline
      `datasets.load_dataset("glue", "mrpc", split="validation")` (and "nyu-mll/glue") load it.
      rows: {split: [dict, ...]}; default: recipes/data/paraphrase_pairs.csv cut into the 3 splits.
* add_evaluate_metric(root, name, script) -> Path
      A metric script (the source of an `evaluate.Metric` module named `name`) in evaluate's modules
      cache as an online `evaluate.load(name)` leaves it (ROOT/modules/evaluate_modules/metrics/
      evaluate-metric--NAME/<hash>/NAME.py), so that evaluate.load(name) works offline.
      ACCURACY_METRIC and ROC_AUC_METRIC are such scripts (written here, not evaluate's own).
* offline_env(root) -> dict
      The environment variables that point the libraries at this cache, offline:
      HF_HOME, HF_HUB_CACHE, HF_DATASETS_CACHE, HF_MODULES_CACHE, HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1.
      Give them to a subprocess (`env={**os.environ, **offline_env(root)}`) as they are.
* use_offline_cache(monkeypatch, root) -> dict
      For the test's own process: sets offline_env(root) with monkeypatch and also the copies
      huggingface_hub, datasets and evaluate made of them at import (they read these variables once).
      The token file moves into ROOT too (ROOT/token, absent unless a test writes it).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GLUE_REPO = "nyu-mll/glue"
MRPC_SPLITS = {"train": (0, 200), "validation": (200, 260), "test": (260, 300)}


def hub_cache(root: Path) -> Path:
    return Path(root) / "hub"


def datasets_cache(root: Path) -> Path:
    return Path(root) / "datasets"


def offline_env(root: Path) -> dict:
    root = Path(root)
    return {"HF_HOME": str(root), "HF_HUB_CACHE": str(hub_cache(root)), "HF_DATASETS_CACHE": str(datasets_cache(root)),
            "HF_MODULES_CACHE": str(root / "modules"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def use_offline_cache(monkeypatch, root: Path) -> dict:
    env = offline_env(root)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import datasets.config
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HOME", env["HF_HOME"])
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(Path(root) / "token"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(env["HF_DATASETS_CACHE"]))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    try:
        import evaluate.config
    except ImportError:  # evaluate is optional (backend huggingface_metrics)
        return env
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", Path(env["HF_MODULES_CACHE"]))
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    # evaluate imports metric scripts as the package evaluate_modules, found on sys.path: an earlier test's
    # modules root must not shadow this one (Python keeps the first evaluate_modules it imported).
    import importlib
    import sys

    for module in [m for m in sys.modules if m == "evaluate_modules" or m.startswith("evaluate_modules.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.syspath_prepend(env["HF_MODULES_CACHE"])
    importlib.invalidate_caches()
    return env


ACCURACY_METRIC = """import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="the share of predictions equal to their references", citation="",
            inputs_description="predictions, references: integer labels",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        return {"accuracy": sum(int(p == r) for p, r in zip(predictions, references)) / len(references)}
"""


ROC_AUC_METRIC = """import datasets
import evaluate
from sklearn.metrics import roc_auc_score


class RocAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="area under the ROC curve of the positive class's scores", citation="",
            inputs_description="prediction_scores: floats, references: integer labels",
            features=datasets.Features({"prediction_scores": datasets.Value("float64"),
                                        "references": datasets.Value("int64")}))

    def _compute(self, prediction_scores, references):
        return {"roc_auc": float(roc_auc_score(references, prediction_scores))}
"""


def add_evaluate_metric(root: Path, name: str, script: str) -> Path:
    folder = Path(root) / "modules" / "evaluate_modules" / "metrics" / f"evaluate-metric--{name}"
    snapshot = folder / hashlib.sha256(script.encode()).hexdigest()
    snapshot.mkdir(parents=True, exist_ok=True)
    for package in (folder.parent.parent, folder.parent, folder, snapshot):  # importable, as evaluate makes them
        (package / "__init__.py").touch()
    (snapshot / f"{name}.py").write_text(script)
    return snapshot / f"{name}.py"


def _repo_folder(root: Path, repo_id: str, kind: str) -> Path:
    return hub_cache(root) / f"{kind}s--{repo_id.replace('/', '--')}"


def _add_snapshot(root: Path, repo_id: str, files: dict[str, Path], kind: str, revision: str) -> str:
    """files: relative name -> source file. Blobs are named by their sha256 (as LFS files are)."""
    repo = _repo_folder(root, repo_id, kind)
    listing = hashlib.sha1()
    digests = {}
    for name in sorted(files):
        digests[name] = hashlib.sha256(files[name].read_bytes()).hexdigest()
        listing.update(f"{name}\0{digests[name]}\0".encode())
    commit = revision if _is_commit(revision) else listing.hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        blob = repo / "blobs" / digests[name]
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    if not _is_commit(revision):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    return commit


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def add_hub_model(root: Path, repo_id: str, folder: Path, revision: str = "main") -> str:
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return _add_snapshot(root, repo_id, files, "model", revision)


def _default_mrpc_rows() -> dict[str, list[dict]]:
    with open(REPO / "recipes" / "data" / "paraphrase_pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    return {split: [{"sentence1": row["sentence1"], "sentence2": row["sentence2"], "label": int(row["label"]), "idx": index}
                    for index, row in enumerate(pairs[begin:end])]
            for split, (begin, end) in MRPC_SPLITS.items()}


MRPC_README = """---
configs:
- config_name: mrpc
  data_files:
  - split: train
    path: mrpc/train-*
  - split: validation
    path: mrpc/validation-*
  - split: test
    path: mrpc/test-*
---
# glue (a small test stand-in for nyu-mll/glue, mrpc config only)
"""


def add_glue_mrpc(root: Path, rows: dict[str, list[dict]] | None = None) -> str:
    """The hub repo's files first (parquet per split, README.md with configs), then the datasets
    cache prepared from them under each name a user may load it by."""
    import datasets

    datasets.disable_progress_bars()
    rows = rows or _default_mrpc_rows()
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
                                  "idx": datasets.Value("int32")})
    staging = Path(root) / "staging" / "glue"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "mrpc").mkdir(parents=True)
    (staging / "README.md").write_text(MRPC_README)
    for split, split_rows in rows.items():
        table = datasets.Dataset.from_list(split_rows, features=features)
        table.to_parquet(str(staging / "mrpc" / f"{split}-00000-of-00001.parquet"))
    files = {p.relative_to(staging).as_posix(): p for p in sorted(staging.rglob("*")) if p.is_file()}
    commit = _add_snapshot(root, GLUE_REPO, files, "dataset", "main")
    snapshot = _repo_folder(root, GLUE_REPO, "dataset") / "snapshots" / commit
    for repo_id in ("glue", GLUE_REPO):
        _prepare(snapshot, repo_id, "mrpc", commit, datasets_cache(root))
    shutil.rmtree(staging.parent)
    return commit


def _prepare(snapshot: Path, repo_id: str, config_name: str, commit: str, cache_dir: Path) -> None:
    """Write the Arrow cache an online load of repo_id leaves: CACHE/<namespace___>glue/mrpc/0.0.0/<commit>/.
    The builder is the one the README's configs give the snapshot's files (parquet), named as the
    hub names it (repo_id, dataset name, the commit as its hash)."""
    import datasets

    local = datasets.load_dataset_builder(str(snapshot), config_name, cache_dir=str(cache_dir))
    builder = type(local)(cache_dir=str(cache_dir), dataset_name=repo_id.split("/")[-1], config_name=config_name,
                          hash=commit, base_path=str(snapshot))
    if "/" in repo_id:  # named as the hub names it: namespace___name (data files are local, so set after init)
        builder.repo_id = repo_id
        builder._cache_dir_root, builder._cache_dir = str(cache_dir), builder._build_cache_dir()
    builder.download_and_prepare()
