"""scripts/run_notebooks.py: parameters injected after the tagged cell, timings, failures."""

import json
import time

import nbformat
import pytest
from conftest import ROOT, load_script

runner = load_script("run_notebooks")


def notebook(*cells, tags=None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    for index, cell_tags in (tags or {}).items():
        nb.cells[index].metadata["tags"] = cell_tags
    return nb


def test_parameters_are_injected_after_the_tagged_cell_only_if_it_assigns_them():
    nb = notebook("x = 1", "minutes = 30\nsteps: int = 5", "y = minutes", tags={1: ["parameters"]})
    used = runner.inject_parameters(nb, {"minutes": 0.5, "steps": 2, "other": 1})
    assert used == {"minutes": 0.5, "steps": 2}
    assert [c.source for c in nb.cells][1:3] == [
        "minutes = 30\nsteps: int = 5",
        "# Injected by scripts/run_notebooks.py\nminutes = 0.5\nsteps = 2",
    ]
    untagged = notebook("minutes = 30")
    assert runner.inject_parameters(untagged, {"minutes": 1}) == {}
    assert len(untagged.cells) == 1


def test_params_are_python_literals():
    assert runner.parse_params(["a=1.5", "b='x'", "c=True"]) == {"a": 1.5, "b": "x", "c": True}
    for bad in ["a", "1a=2", "a=open('f')"]:
        with pytest.raises(SystemExit):
            runner.parse_params([bad])


def test_the_toc_lists_every_chapter_in_order():
    names = [path.stem for path in runner.toc_notebooks()]
    assert names[0] == "00_setup" and "20_performance" in names
    assert names == sorted(names)
    assert {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")} == set(names)


@pytest.mark.slow
def test_a_run_records_times_failures_and_budget(tmp_path):
    """Three small notebooks in fresh kernels: one passes with a parameter, one fails."""
    checks = "import os\nassert minutes == 0.5, minutes\nassert os.environ['DDPM_SIZE'] == 'toy'"
    good = notebook("minutes = 30", checks, "import time\ntime.sleep(0.3)",
                    tags={0: ["parameters"], 2: ["timed"]})  # fmt: skip
    bad = notebook("x = 1", "raise ValueError('planted failure')", "never = True")
    for name, nb in [("a_good", good), ("b_bad", bad), ("c_late", notebook("pass"))]:
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    out = tmp_path / "out"
    paths = [str(tmp_path / f"{n}.ipynb") for n in ("a_good", "b_bad")]
    status = runner.main([*paths, "--param", "minutes=0.5", "--out", str(out), "--size", "toy"])
    assert status == 1  # a notebook failed
    results = json.loads((out / "notebook_runs.json").read_text())
    good_run, bad_run = results["notebooks"]
    assert good_run["status"] == "ok" and good_run["params"] == {"minutes": 0.5}
    assert good_run["seconds"] > 0 and good_run["slowest_cells"]
    assert bad_run["status"] == "error" and bad_run["ename"] == "ValueError"
    assert "planted failure" in bad_run["evalue"] and bad_run["failed_cell"] == 1
    assert (out / "executed" / "b_bad.ipynb").exists()
    assert results["meta"]["size"] == "toy" and results["meta"]["cpus"] >= 1
    # The cell tagged "timed": its id, the hash of its source, and its own time.
    (timed,) = good_run["timed_cells"]
    assert timed["cell_id"] == good.cells[2].id and timed["seconds"] >= 0.3
    assert timed["source_sha256"] == runner.source_sha256("import time\ntime.sleep(0.3)")
    assert bad_run["timed_cells"] == []
    # A spent budget skips the notebooks still to come, and says so.
    status = runner.main([str(tmp_path / "c_late.ipynb"), "--budget-s", "1e-9", "--out", str(out),
                          "--no-executed"])  # fmt: skip
    late = json.loads((out / "notebook_runs.json").read_text())["notebooks"][0]
    assert status == 0 and late["status"] == "skipped" and "time budget" in late["reason"]


@pytest.mark.slow
def test_the_hard_limit_stops_a_long_cell_and_says_so(tmp_path):
    nbformat.write(notebook("import time", "time.sleep(60)"), tmp_path / "slow.ipynb")
    out = tmp_path / "out"
    start = time.monotonic()
    status = runner.main([str(tmp_path / "slow.ipynb"), "--hard-limit-s", "4", "--out", str(out)])
    assert time.monotonic() - start < 30
    record = json.loads((out / "notebook_runs.json").read_text())["notebooks"][0]
    assert status == 1 and record["status"] == "timeout", record


TOY_RUNS = ROOT / "book" / "results" / "toy_cpu" / "notebook_runs.json"


def test_the_times_the_book_quotes_were_measured_on_the_cells_as_they_are():
    """Each cell tagged "timed" (a live cell whose time the book states) has a committed time,
    measured at toy size on the build machine on its present source, of at most 30 s. A changed
    cell needs a new measurement: the command is in the results file and in run_notebooks.py."""
    runs = json.loads(TOY_RUNS.read_text())
    assert runs["meta"]["size"] == "toy" and "--no-executed" in runs["meta"]["command"]
    measured = {
        (r["notebook"], c["cell_id"]): c for r in runs["notebooks"] for c in r["timed_cells"]
    }
    assert all(r["status"] == "ok" for r in runs["notebooks"])
    timed = []
    for path in runner.toc_notebooks():
        for cell in nbformat.read(path, as_version=4).cells:
            if runner.TIMED_TAG in cell.metadata.get("tags", []):
                timed.append((path.stem, cell.id))
                record = measured.get((path.stem, cell.id))
                assert record is not None, f"{path.stem} cell {cell.id}: no committed time"
                assert record["source_sha256"] == runner.source_sha256(cell.source), (
                    f"{path.stem} cell {cell.id} changed since its time was measured"
                )
                assert record["seconds"] is not None and record["seconds"] <= 30, record
    assert {name[:2] for name, _ in timed} >= {"07", "09", "10"}
