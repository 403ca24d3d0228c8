"""report.html, checked in headless Chromium: the page a browser renders, not just that a file exists."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser

import pytest

import olive_systems
from olive_systems.cli import main
from olive_systems.ranking import pareto_front
from olive_systems.report import write_report

from conftest import tiny_recipe

# User text that would break out of an attribute and a cell, and mark the page if it ever ran (no alert(): it blocks).
HOSTILE = '"><script>document.body.dataset.pwned=1</script>'
PWN = '<img src=x onerror="document.body.dataset.pwned=1">'
LAT, ACC, FID = "latency-p50", "accuracy-accuracy_score", "fidelity-cosine_mean"


def metrics(latency: float, accuracy: float, fidelity: float) -> dict:
    return {LAT: {"value": latency, "priority": 1, "higher_is_better": False},
            ACC: {"value": accuracy, "priority": 2, "higher_is_better": True},
            FID: {"value": fidelity, "priority": -1, "higher_is_better": True}}


def candidate(model_id, rank, values, device="CPU", ep="CPUExecutionProvider", pareto=False, missed=(), passes=("conversion",)):
    history = [{"model_id": f"{i}_{p}", "parent_model_id": f"{i - 1}_x" if i else "input_model-1234abcd", "pass": p,
                "type": {"conversion": "OnnxConversion", "dynamic": "OnnxDynamicQuantization",
                         "static": "OnnxStaticQuantization"}[p],
                "config": {"target_opset": 17} if p == "conversion" else {"per_channel": True},
                "key": "k" * 16, "cached": i == 0, "seconds": 1.5} for i, p in enumerate(passes)]
    return {"model_id": model_id, "model_path": f"/out/{model_id}/model.onnx", "model_type": "onnxmodel",
            "metrics": metrics(*values), "device": device, "execution_provider": ep, "rank": rank,
            "meets_goals": not missed, "missed_goals": list(missed), "pareto": pareto,
            "runtime": {"package": "onnxruntime", "version": "1.24.1"}, "run_history": history}


# Front: gpu (2 ms, .80), HOSTILE (5 ms, .85), conversion (10 ms, .90). Dominated: old-export, static.
MODELS = [
    candidate("gpu", 1, (2.0, 0.80, 0.999), device="GPU", ep="CUDAExecutionProvider", pareto=True),
    candidate(HOSTILE, 2, (5.0, 0.85, 0.99), pareto=True, passes=("conversion", "dynamic")),
    candidate("conversion", 3, (10.0, 0.90, 1.0), pareto=True),
    candidate("old-export", 4, (12.0, 0.80, 1.0)),
    candidate("static", 5, (6.0, 0.70, 0.8), missed=["fidelity-cosine_mean 0.8 misses threshold 0.9"],
              passes=("conversion", "static")),
]
FRONT = {"gpu", HOSTILE, "conversion"}
DATA = {
    "input_model_metrics": metrics(20.0, 0.90, 1.0),
    "failures": [{"model_id": "conversion-fp16", "error": f"fp16 broke {PWN}", "fix": "drop the fp16 pass",
                  "log_tail": ["first line", "</pre><script>document.body.dataset.pwned=1</script>"],
                  "device": "CPU", "execution_provider": "CPUExecutionProvider"}],
    "steps": [], "models": MODELS, "output_dir": "/out",
}


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("CI must check report.html in a browser, but no chromium is installed (.ci/run installs it)")
    pytest.skip("chromium not installed here (apt-get install chromium)")


def chromium(path, tmp_path, *args: str) -> str:
    """Headless Chromium on a file: the DOM it built (--dump-dom) or whatever *args ask for."""
    result = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                             *args, path.resolve().as_uri()], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Dom(HTMLParser):
    """A flat list of the page's elements: tag, attributes and all the text inside."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.open = [], []
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(element)
        if tag not in self.VOID:
            self.open.append(element)

    def handle_startendtag(self, tag, attrs):
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": ""})

    def handle_endtag(self, tag):
        while self.open and self.open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for element in self.open:
            element["text"] += data

    def find(self, tag: str, cls: str | None = None, id: str | None = None) -> list[dict]:
        return [e for e in self.elements if e["tag"] == tag and (cls is None or cls in (e["attrs"].get("class") or "").split())
                and (id is None or e["attrs"].get("id") == id)]


def report_dom(tmp_path, data: dict) -> Dom:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "workflow_output.json").write_text(json.dumps(data))
    path = write_report(tmp_path)  # no data: read from workflow_output.json, as `olive-systems report` does
    assert path == tmp_path / "report.html"
    return Dom(chromium(path, tmp_path, "--dump-dom"))


@pytest.fixture(scope="module")
def dom(tmp_path_factory) -> Dom:
    assert {c["model_id"] for c in pareto_front(MODELS)} == FRONT  # the hand-written flags agree with the engine
    return report_dom(tmp_path_factory.mktemp("report"), DATA)


def test_the_plot_has_a_marker_per_candidate_and_highlights_the_front(dom):
    markers = dom.find("circle", "candidate")
    assert sorted(m["attrs"]["data-model-id"] for m in markers) == sorted(c["model_id"] for c in MODELS)
    assert {m["attrs"]["data-model-id"] for m in dom.find("circle", "pareto")} == FRONT
    at = {m["attrs"]["data-model-id"]: (float(m["attrs"]["cx"]), float(m["attrs"]["cy"])) for m in markers}
    assert min(at, key=lambda k: at[k][0]) == "gpu"         # x: latency, the fastest leftmost
    assert min(at, key=lambda k: at[k][1]) == "conversion"  # y: accuracy, the most accurate on top (SVG y grows down)
    line = [tuple(map(float, p.split(","))) for p in dom.find("polyline", "front")[0]["attrs"]["points"].split()]
    assert line == sorted(at[k] for k in FRONT)  # the front joined in order along x
    [input_marker] = dom.find("path", "input-model")
    assert "input model" in input_marker["text"] and "20" in input_marker["text"]
    assert dom.find("text", id="x-title")[0]["text"] == "latency-p50 (lower is better)"
    assert dom.find("text", id="y-title")[0]["text"] == "accuracy-accuracy_score (higher is better)"
    tip = next(m for m in markers if m["attrs"]["data-model-id"] == HOSTILE)["text"]
    assert tip.splitlines() == [HOSTILE, "rank 2, CPU / CPUExecutionProvider", "latency-p50: 5", "accuracy-accuracy_score: 0.85"]


def test_the_table_has_a_row_per_candidate_with_passes_metrics_goals_and_front(dom):
    rows = dom.find("tr", "candidate")
    assert [r["attrs"]["data-model-id"] for r in rows] == [c["model_id"] for c in MODELS]  # rank order
    assert [e["text"] for e in dom.find("td", "model-id")] == [c["model_id"] for c in MODELS]
    hostile = rows[1]["text"]
    assert "CUDA" not in hostile
    for text in ("CPUExecutionProvider", "onnxruntime 1.24.1", "conversion (OnnxConversion)",
                 "target_opset=17", "dynamic (OnnxDynamicQuantization)", "per_channel=true", "0.85", "0.99", "meets"):
        assert text in hostile
    assert "GPU" in rows[0]["text"] and "CUDAExecutionProvider" in rows[0]["text"]
    assert "missed" in rows[4]["text"] and "fidelity-cosine_mean 0.8 misses threshold 0.9" in rows[4]["text"]
    assert "missed" in rows[4]["attrs"]["class"]
    assert {r["attrs"]["data-model-id"] for r in rows if "pareto" in r["attrs"]["class"].split()} == FRONT
    assert [r["text"].rstrip().endswith("yes") for r in rows] == [c["pareto"] for c in MODELS]
    assert "input model" in dom.find("tr", "input-model")[0]["text"]
    [failure] = dom.find("tr", "failure")
    assert "conversion-fp16" in failure["text"] and f"fp16 broke {PWN}" in failure["text"]
    assert "drop the fp16 pass" in failure["text"] and "first line" in failure["text"]


def test_user_text_stays_text(dom):
    assert dom.find("script") == [] and dom.find("img") == []  # the page has no scripts of its own: none got in
    assert "data-pwned" not in dom.find("body")[0]["attrs"]
    assert dom.find("title")[0]["text"] == "olive-systems run: /out"


def test_the_screenshot_shows_a_page(tmp_path):
    (tmp_path / "report").mkdir()
    path = write_report(tmp_path / "report", DATA)
    shot = tmp_path / "shot.png"
    chromium(path, tmp_path, f"--screenshot={shot}", "--window-size=1200,1400", "--hide-scrollbars")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1200, 1400)
    chunks, at = [], 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        chunks += [png[at + 8:at + 8 + length]] if kind == b"IDAT" else []
        at += length + 12
    raw = zlib.decompress(b"".join(chunks))
    stride = len(raw) // 1400
    rows = {raw[i * stride + 1:(i + 1) * stride] for i in range(1400)}  # a blank page is one row over and over
    assert len(rows) > 100, "the screenshot is blank"


def test_one_priority_metric_plots_it_per_candidate_and_no_metrics_says_so(tmp_path):
    one = json.loads(json.dumps(DATA))
    for entry in [one["input_model_metrics"]] + [m["metrics"] for m in one["models"]]:
        entry[ACC]["priority"] = -1
    dom = report_dom(tmp_path / "one", one)
    assert len(dom.find("circle", "candidate")) == len(MODELS)
    assert dom.find("text", id="y-title")[0]["text"] == "rank (1 is best)"
    assert "Only one metric has a priority (latency-p50)" in dom.find("body")[0]["text"]

    none = dict(DATA, input_model_metrics=None, models=[dict(m, metrics={}) for m in MODELS])
    dom = report_dom(tmp_path / "none", none)
    assert dom.find("circle") == [] and "measured no metrics" in dom.find("p", id="no-plot")[0]["text"]
    assert len(dom.find("tr", "candidate")) == len(MODELS)


def test_a_run_writes_the_report_and_the_cli_rewrites_it(tiny_bert, tmp_path, capsys):
    recipe = tiny_recipe(tiny_bert, tmp_path, pass_flows=[["conversion"], ["conversion", "dynamic"]])
    output = olive_systems.run(recipe)
    report = tmp_path / "out" / "report.html"
    dom = Dom(report.read_text())
    ids = sorted(m.model_id for m in output.get_output_models())
    assert sorted(m["attrs"]["data-model-id"] for m in dom.find("circle", "candidate")) == ids
    assert [r["attrs"]["data-model-id"] for r in dom.find("tr", "candidate")] == [m.model_id for m in output.get_output_models()]

    report.unlink()
    assert main(["report", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(report) and report.read_text().count('class="candidate') >= 2 * len(ids)

    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "has no workflow_output.json" in err and "fix: give the output folder of a finished run" in err


def _boxes_overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_crowded_points_stay_readable_and_a_slow_input_model_does_not_squash_the_plot(tmp_path):
    """Six candidates within 1% of each other and an input model 200x slower: a log axis, every marker
    visible, Pareto markers on top, no two labels on each other."""
    crowded = [candidate(f"c{i}", i + 1, (1.0 + 0.002 * (i % 3), 0.9 + 0.0005 * (i // 2), 0.99), pareto=i in (0, 1))
               for i in range(6)]
    data = dict(DATA, models=crowded, failures=[], input_model_metrics=metrics(200.0, 0.9, 1.0))
    dom = report_dom(tmp_path, data)
    [svg] = dom.find("svg", id="plot")
    assert svg["attrs"]["data-x-scale"] == "log" and "log scale" in dom.find("text", id="x-title")[0]["text"]
    markers = dom.find("circle", "candidate")
    positions = [(float(m["attrs"]["cx"]), float(m["attrs"]["cy"])) for m in markers]
    assert len(set(positions)) == len(positions)  # none hidden exactly under another
    order = [m["attrs"]["data-model-id"] for m in markers]
    assert set(order[-2:]) == {"c0", "c1"}  # the front drawn last, on top
    labels = dom.find("text", "label")
    assert sorted(label["text"] for label in labels) == sorted([str(i) for i in range(1, 7)] + ["input"])
    boxes = []
    for label in labels:
        x, y, anchor, width = float(label["attrs"]["x"]), float(label["attrs"]["y"]), label["attrs"]["text-anchor"], 7 * len(label["text"])
        left = x if anchor == "start" else x - width if anchor == "end" else x - width / 2
        boxes.append((left, y - 10, left + width, y + 1))
    assert not any(_boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_the_table_marks_searched_settings_cached_steps_and_fused_operators(tmp_path):
    model = candidate("fused", 1, (2.0, 0.9, 0.99), pareto=True, passes=("conversion", "dynamic"))
    model["run_history"][0].update(cached=True, source="shared")
    model["run_history"][1].update(cached=False, seconds=3.25, searched=["per_channel"])
    model["model_config"] = {"config": {"model_attributes": {"fused_operators": {"Attention": 6, "Gelu": 0}}}}
    dom = report_dom(tmp_path, dict(DATA, models=[model], failures=[]))
    [row] = dom.find("tr", "candidate")
    assert [c["text"] for c in dom.find("code", "searched")] == ["per_channel=true (searched)"]
    assert [s["text"] for s in dom.find("small", "step-source")] == ["from the shared cache", "computed in 3.2 s"]
    assert dom.find("td", "fused")[0]["text"] == "Attention ×6"


def test_timings_show_their_interval_and_each_workload_shape(tmp_path):
    model = candidate("int8", 1, (2.0, 0.9, 0.99), pareto=True)
    model["metrics"][LAT].update(interval=[1.9, 2.1], by_shape={
        "1x128": {"value": 1.5, "interval": [1.4, 1.6], "rank": 1, "speed_spread": 0.02},
        "8x128": {"value": 9.0, "interval": [8.5, 9.5], "rank": 2, "median_ratio": 0.47,
                  "median_ratio_interval": [0.45, 0.49], "speed_spread": 0.27}})
    dom = report_dom(tmp_path, dict(DATA, models=[model], failures=[]))
    [row] = dom.find("tr", "candidate")
    assert [e["text"] for e in dom.find("small", "interval")][0] == " [1.9, 2.1]"
    # a machine whose speed changed while a shape was timed is said beside it (a close order may differ)
    assert [e["text"] for e in dom.find("small", "shape")] == [
        "1x128: 1.5 [1.4, 1.6], rank 1",
        "8x128: 9 [8.5, 9.5], rank 2, x0.47 [0.45, 0.49], the machine's speed varied 27% over the rounds"]
