"""One run of scripts/bench_gpu.py: its jobs (the rows to measure), its time budget, and its
results file, saved after every row.

The run does not stop itself: the caller's `timeout` does (scripts/gpu_session.sh). On its
SIGTERM the run records where it stopped ("aborted"), saves, and exits with status 3.
"""

import gc
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch._dynamo


@dataclass(frozen=True)
class Job:
    """One row of the benchmark: what to measure, how urgent it is, and what to record with it.

    fn() returns the row's results (a dict); priority 1 and 2 are essential (see Run.variant),
    3 and 4 extras; est_s() is the time it should take (an estimate that may change as the run
    goes); a job with a `skip` reason is recorded as skipped; done(entry) is told the recorded
    row; a job whose fn raises runs its fallback job, if it has one.
    """

    section: str  # "train" or "sample"
    id: str
    fn: Callable[[], dict]
    priority: int = 1
    est_s: Callable[[], float] = lambda: 1.0
    skip: str | None = None
    info: dict = field(default_factory=dict)
    done: Callable[[dict], None] | None = None
    fallback: "Job | None" = None

    @property
    def essential(self) -> bool:
        return self.priority <= 2


class Run:
    """Results, the time budget and the output file of one benchmark run.

    budget_s: a row that would end past it is skipped (0: no budget). hard_limit_s: the time the
    caller allows the whole run (its `timeout`; 0: none); an essential row may run until 5 s
    before it.
    """

    def __init__(
        self,
        out: Path,
        stem: str,
        budget_s: float,
        hard_limit_s: float,
        meta: dict,
        start: float | None = None,
    ):
        self.out, self.stem, self.budget_s, self.hard_limit_s = out, stem, budget_s, hard_limit_s
        self.start = time.perf_counter() if start is None else start
        self.results = {"meta": meta, "peak": {}, "train": [], "sample": [], "summary": {}}
        self.current = None

    @property
    def json_path(self) -> Path:
        return self.out / f"{self.stem}.json"

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def save(self) -> None:
        self.results["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        self.json_path.write_text(json.dumps(self.results, indent=1, default=str) + "\n")

    def stop_on_sigterm(self) -> None:
        """Make a SIGTERM (from `timeout`) record where the run stopped, save, and exit 3."""

        def abort(signum, frame):
            self.results["meta"]["aborted"] = (
                f"stopped by {signal.Signals(signum).name} after {self.elapsed():.0f} s, "
                f"during {self.current!r}"
            )
            print(f"\nABORTED: {self.results['meta']['aborted']}", flush=True)
            self.save()
            sys.exit(3)

        signal.signal(signal.SIGTERM, abort)

    def variant(
        self,
        section: str,
        vid: str,
        fn,
        est_s: float,
        skip: str | None = None,
        essential: bool = False,
        **info,
    ) -> dict:
        """Run fn() -> dict of results as row `vid` of `section`; record it, never raise.

        It is skipped if it would end (elapsed + est_s) past the budget, or, if `essential`,
        past the hard limit less 5 s.
        """
        entry = {"id": vid, **info}
        limit = self.budget_s
        if essential and self.hard_limit_s > 0:
            limit = max(limit, self.hard_limit_s - 5)
        if skip is None and limit > 0 and self.elapsed() + est_s > limit:
            skip = (
                f"time budget: {self.elapsed():.0f} s spent, about {est_s:.0f} s more needed, "
                f"limit {limit:.0f} s"
            )
        if skip is not None:
            entry.update(status="skipped", reason=skip)
            print(f"[{self.elapsed():6.1f} s] {section} {vid}: skipped ({skip})", flush=True)
        else:
            entry.update(self._measure(section, vid, fn))
            shown = {k: v for k, v in entry.items() if k not in ("traceback", "switches")}
            print(f"[{self.elapsed():6.1f} s] {section} {vid}: {shown}", flush=True)
        self.results[section].append(entry)
        self.save()
        return entry

    def _measure(self, section: str, vid: str, fn) -> dict:
        self.current = f"{section} {vid}"
        print(f"[{self.elapsed():6.1f} s] {section} {vid} ...", flush=True)
        t0 = time.perf_counter()
        try:
            entry = {**fn(), "status": "ok"}
        except Exception as e:  # noqa: BLE001 - one row's failure must not end the run
            entry = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
            entry["traceback"] = traceback.format_exc()[-4000:]
            print(entry["traceback"], flush=True)
        entry["wall_s"] = round(time.perf_counter() - t0, 2)
        self.current = None
        try:  # (a broken CUDA context fails here too: it is recorded, the run goes on)
            torch._dynamo.reset()  # one row's compiled code must not shape the next's
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001
            entry["cleanup_error"] = f"{type(e).__name__}: {e}"[:500]
        return entry


def run_jobs(
    run: Run,
    jobs: list[Job],
    only: set[str] | None = None,
    no_extras: bool = False,
    inject_failure: str | None = None,
) -> None:
    """Run the jobs through run.variant by priority (a stable sort keeps the lists' order).

    only: the ids to run (a train id, or sample-<id>); no_extras: skip priority 4;
    inject_failure: the id of a job made to raise (to test the recording). A job that fails
    runs its fallback job, if it has one.
    """
    for job in sorted(jobs, key=lambda j: j.priority):
        names = {job.id, f"{job.section}-{job.id}"}
        if (only and not names & only) or (no_extras and job.priority > 3):
            continue
        _run_job(run, job, inject_failure)


def _run_job(run: Run, job: Job, inject_failure: str | None) -> None:
    fn = job.fn
    if inject_failure in (job.id, f"{job.section}-{job.id}"):

        def fn():
            raise RuntimeError("injected failure (--inject-failure), to test the recording")

    entry = run.variant(job.section, job.id, fn, job.est_s(), job.skip, job.essential, **job.info)
    if job.done is not None:
        job.done(entry)
    if entry["status"] == "error" and job.fallback is not None:
        _run_job(run, job.fallback, inject_failure)
