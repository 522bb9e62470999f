"""Execute the book's notebooks one by one and record how long each took and what failed.

    python scripts/run_notebooks.py --size full --out runs/notebooks --budget-s 300 \
        --param train_minutes=1.5

Each notebook runs in a fresh kernel (nbclient), in its own folder, with DDPM_SIZE set to
--size. A --param NAME=VALUE is injected, as papermill does, in a new cell right after the
cell tagged "parameters" of every notebook whose parameters cell assigns NAME; the results say
which notebooks got which values. Writes <out>/notebook_runs.json (per notebook: status,
seconds, the slowest cells, the error if any, and the time of each cell tagged "timed") and,
unless --no-executed, <out>/executed/<name>.ipynb, and prints a Markdown table last. The exit
status is 1 if any notebook failed or timed out.

A cell tagged "timed" is one whose time the book quotes (its live sampling cells, for example).
Its record holds the cell's id and the SHA-256 of its source, so that a test can tell a time
measured on the cell as it is now from one measured on an older version of it:

    python scripts/run_notebooks.py notebooks/07_training_and_sampling.ipynb \
        notebooks/09_faster_sampling.ipynb notebooks/10_guidance.ipynb \
        --out book/results/toy_cpu --no-executed

This is the book's "full size" run on a GPU machine (chapter 20 commits its results); on a
laptop CPU, `--size toy` runs the same notebooks that `make book` executes.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

ROOT = Path(__file__).resolve().parents[1]
PARAMETERS_TAG = "parameters"
TIMED_TAG = "timed"


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks of _toc.yml, in the book's order (pages that are not notebooks left out)."""
    import yaml

    sys.path.insert(0, str(Path(__file__).parent))  # scripts/check_toc.py, beside this file
    from check_toc import toc_files

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    paths = [root / f"{page}.ipynb" for page in toc_files(toc)]
    return [path for path in paths if path.exists()]


def parse_params(pairs: list[str]) -> dict[str, object]:
    """["train_minutes=1.5", 'name="x"'] -> {"train_minutes": 1.5, "name": "x"} (literals)."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"--param wants NAME=VALUE with NAME a Python name, got {pair!r}")
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--param {name}: {value!r} is not a Python literal") from None
    return params


def assigned_names(source: str) -> set[str]:
    """The names that a cell's code assigns at top level."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        else:
            continue
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def inject_parameters(nb, params: dict[str, object]) -> dict[str, object]:
    """Insert a cell setting the params that the notebook's parameters cell assigns, after it.

    Returns the params injected ({} if the notebook has no parameters cell or none match).
    """
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.metadata.get("tags", []):
            used = {k: v for k, v in params.items() if k in assigned_names(cell.source)}
            if used:
                source = "# Injected by scripts/run_notebooks.py\n" + "\n".join(
                    f"{k} = {v!r}" for k, v in used.items()
                )
                new = nbformat.v4.new_code_cell(source)
                new.metadata["tags"] = ["injected-parameters"]
                nb.cells.insert(index + 1, new)
            return used
    return {}


def cell_seconds(cell) -> float | None:
    """A cell's execution time from the timing that nbclient records in its metadata."""
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    start, end = (dt.datetime.fromisoformat(s.replace("Z", "+00:00")) for s in (start, end))
    return (end - start).total_seconds()


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def timed_cells(nb) -> list[dict]:
    """The id, source hash and seconds of each code cell tagged "timed" (None if it never ran)."""
    return [
        {"cell_id": c.get("id"), "source_sha256": source_sha256(c.source),
         "seconds": None if (s := cell_seconds(c)) is None else round(s, 1)}
        for c in nb.cells
        if c.cell_type == "code" and TIMED_TAG in c.metadata.get("tags", [])
    ]  # fmt: skip


def run_one(
    path: Path,
    params: dict,
    cell_timeout: int,
    out_dir: Path | None,
    deadline: float | None = None,
    keep_executed: bool = True,
) -> dict:
    """Execute one notebook; return its record (status, seconds, slowest cells, error).

    No cell runs longer than cell_timeout seconds, nor past `deadline` (time.monotonic()).
    """
    nb = nbformat.read(path, as_version=4)
    injected = inject_parameters(nb, params)

    def cell_limit(cell) -> int:
        if deadline is None:
            return cell_timeout
        return max(1, min(cell_timeout, int(deadline - time.monotonic())))

    client = NotebookClient(
        nb, timeout=cell_timeout, timeout_func=cell_limit, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )  # fmt: skip
    record = {"notebook": path.stem, "params": injected}
    start = time.perf_counter()
    try:
        client.execute()
        record["status"] = "ok"
    except CellTimeoutError as exc:
        record.update(status="timeout", error=str(exc).strip().splitlines()[-1][:500])
    except CellExecutionError as exc:
        record.update(status="error", ename=exc.ename, evalue=str(exc.evalue)[:500])
    except Exception as exc:  # the kernel died, or could not start
        record.update(status="error", ename=type(exc).__name__, evalue=str(exc)[:500])
    record["seconds"] = round(time.perf_counter() - start, 1)
    timed = [
        (i, s) for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (s := cell_seconds(c)) is not None
    ]  # fmt: skip
    record["slowest_cells"] = [
        {"cell": i, "seconds": round(s, 1), "first_line": nb.cells[i].source.split("\n")[0][:80]}
        for i, s in sorted(timed, key=lambda x: -x[1])[:3]
    ]
    record["timed_cells"] = timed_cells(nb)
    if record["status"] != "ok":
        failed = [
            i for i, c in enumerate(nb.cells)
            if any(o.get("output_type") == "error" for o in c.get("outputs", []))
        ]  # fmt: skip
        record["failed_cell"] = failed[0] if failed else None
    if out_dir is not None and keep_executed:
        (out_dir / "executed").mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / "executed" / path.name)
    return record


def markdown_table(records: list[dict]) -> str:
    lines = ["| notebook | status | seconds | slowest cell (s) | note |"]
    lines.append("|---|---|---:|---:|---|")
    for r in records:
        slow = r.get("slowest_cells") or []
        slow_txt = f"{slow[0]['seconds']:.1f} (cell {slow[0]['cell']})" if slow else "-"
        note = ", ".join(f"{k}={v!r}" for k, v in r.get("params", {}).items())
        if r["status"] not in ("ok", "skipped"):
            note = (note + "; " if note else "") + (
                r.get("error") or f"{r.get('ename')}: {r.get('evalue')}"
            ).replace("|", "/").replace("\n", " ")[:160]
        elif r["status"] == "skipped":
            note = r.get("reason", "")
        seconds = "-" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['notebook']} | {r['status']} | {seconds} | {slow_txt} | {note} |")
    return "\n".join(lines)


def environment(size: str) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))  # scripts/provenance.py, beside this file
    from provenance import code_version

    env = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "size": size, "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "code": code_version(),
        "command": "python scripts/run_notebooks.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip
    try:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook of _toc.yml")
    p.add_argument("--size", choices=["toy", "full"], default="toy", help="sets DDPM_SIZE")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--cell-timeout", type=int, default=600, help="seconds per cell")
    p.add_argument("--budget-s", type=float, default=0,
                   help="start no notebook after this many seconds (0: no limit)")  # fmt: skip
    p.add_argument("--hard-limit-s", type=float, default=0,
                   help="stop the cell running at this many seconds from the start, recorded "
                        "as a timeout (0: no limit)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON and notebooks")
    p.add_argument("--no-executed", action="store_true",
                   help="write only the JSON, not the executed notebooks")  # fmt: skip
    args = p.parse_args(argv)

    params = parse_params(args.param)
    paths = [path.resolve() for path in args.notebooks] or toc_notebooks()
    os.environ["DDPM_SIZE"] = args.size
    os.environ.pop("MPLBACKEND", None)  # an Agg backend here would drop every figure
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    results = {"meta": environment(args.size), "notebooks": []}
    start = time.perf_counter()
    for path in paths:
        spent = time.perf_counter() - start
        if args.budget_s and spent > args.budget_s:
            reason = f"time budget: {spent:.0f} s spent of {args.budget_s:.0f}"
            record = {"notebook": path.stem, "status": "skipped", "reason": reason}
        else:
            print(f"[{spent:6.1f} s] {path.stem} ...", flush=True)
            deadline = time.monotonic() + args.hard_limit_s - spent if args.hard_limit_s else None
            record = run_one(path, params, args.cell_timeout, args.out, deadline,
                             keep_executed=not args.no_executed)  # fmt: skip
            print(f"[{time.perf_counter() - start:6.1f} s] {path.stem}: {record['status']} "
                  f"in {record['seconds']:.1f} s", flush=True)  # fmt: skip
        results["notebooks"].append(record)
        if args.out:  # after every notebook: a run cut short keeps what it measured
            (args.out / "notebook_runs.json").write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(markdown_table(results["notebooks"]))
    return 0 if all(r["status"] in ("ok", "skipped") for r in results["notebooks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
