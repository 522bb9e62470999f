"""Sample quality against the number of network evaluations, for the solvers of chapter 09.

    python scripts/sampling_quality.py                       # every point: hours on a CPU
    python scripts/sampling_quality.py --steps 5 10 --num 200 --out /tmp/q.json   # a quick look

For each solver ("ddpm": Algorithm 2's step on the strided chain, the same as DDIM with eta = 1;
"ddim": eta = 0; "dpm_solver++": DPM-Solver++(2M)) and each number of steps, it draws --num
digits from the shipped MNIST model (ddpm_lib.checkpoints.load_pretrained("mnist")) with trailing
timesteps, and scores them as chapter 07 does (ddpm_lib.metrics.quality_table): the squared
Frechet distance in the digit classifier's features to the real test digits, the classifier's
mean confidence and the entropy of its predicted classes. It also gives the distance to the
1,000 samples that the model's training run drew with all 1,000 steps (stored with the
checkpoint), and the wall time of each point. Each point records the call that made it ("run":
the command, machine, threads, torch, code version and date); "about" describes the last call.

The results file is rewritten after every point, and a point already in it is skipped, so that
an interrupted run resumes where it stopped. Chapter 09 reads the committed file
(book/results/sampling_quality.json).
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # use this checkout's ddpm_lib

import numpy as np  # noqa: E402
import torch  # noqa: E402
from provenance import code_version  # noqa: E402

from ddpm_lib.checkpoints import load_pretrained, pretrained_path  # noqa: E402
from ddpm_lib.metrics import (  # noqa: E402
    as_classifier_input,
    draw_digits,
    frechet_distance,
    from_uint8,
    load_digit_classifier,
    quality_table,
)
from ddpm_lib.utils import get_device  # noqa: E402

SOLVERS = ("ddpm", "ddim", "dpm_solver++")
DEFAULT_OUT = ROOT / "book" / "results" / "sampling_quality.json"


def features(classifier, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return classifier.features(as_classifier_input(images))


def point(model, schedule, classifier, stored_feats, solver: str, steps: int, args) -> dict:
    """Draw and score one point of the curve."""
    start = time.perf_counter()
    digits = draw_digits(model, schedule, args.num, batch_size=args.batch, seed=args.seed,
                         num_steps=steps, solver=solver, progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    table = quality_table(digits, classifier)
    gen = table["generated"]
    return {
        "solver": solver,
        "steps": steps,
        "network_evaluations": steps,
        "num_samples": args.num,
        "seconds": round(seconds, 1),
        "frechet_to_test": gen["frechet_distance"],
        "frechet_to_1000_step_samples": frechet_distance(
            features(classifier, digits), stored_feats
        ),  # fmt: skip
        "confidence": gen["confidence"],
        "class_entropy_bits": gen["class_entropy_bits"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solvers", nargs="+", choices=SOLVERS, default=list(SOLVERS))
    p.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20, 50, 100, 250])
    p.add_argument("--num", type=int, default=1000, help="samples per point")
    p.add_argument("--batch", type=int, default=125)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="default: cuda, else mps, else cpu")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    device = torch.device(args.device) if args.device else get_device()
    model, schedule = load_pretrained("mnist", device=device)
    classifier, _ = load_digit_classifier()
    with np.load(pretrained_path("mnist") / "eval_samples.npz") as f:
        stored = from_uint8(f["images"]).reshape(-1, 1, 28, 28)
    stored_feats = features(classifier, stored)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"points": []}
    done = {(r["solver"], r["steps"], r["num_samples"]) for r in results["points"]}
    run = {
        "command": "python scripts/sampling_quality.py " + " ".join(argv or sys.argv[1:]),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "code": code_version(),
        "date": datetime.date.today().isoformat(),
    }
    earlier = {k: results.get("about", {}).get(k) for k in run}
    for row in results["points"]:  # points of an earlier call keep that call's provenance
        row.setdefault("run", earlier)
    results["about"] = run | {
        "spacing": "trailing",
        "reference": {
            "stored_1000_step_samples": len(stored),
            "frechet_stored_to_test": quality_table(stored, classifier)["generated"][
                "frechet_distance"
            ],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for steps in args.steps:
        for solver in args.solvers:
            if (solver, steps, args.num) in done:
                continue
            row = point(model, schedule, classifier, stored_feats, solver, steps, args) | {
                "run": run
            }
            print(json.dumps(row), flush=True)
            results["points"].append(row)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1) + "\n")
            tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
