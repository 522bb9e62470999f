"""Fidelity against diversity as the guidance weight grows, for the guided samplers of chapter 10.

    python scripts/guidance_quality.py --method cg             # classifier guidance of the
                                                               # shipped unconditional model
    python scripts/guidance_quality.py --method cfg            # classifier-free guidance
                                                               # (the mnist_conditional model)
    python scripts/guidance_quality.py --method cg --num 100 --weights 0 4 --out /tmp/g.json
    python scripts/guidance_quality.py --method cfg --weights 2 --classes 5 --num 300 --seed 1
                                                               # more digits of one class

For each weight (cg: the classifier scale s; cfg: Ho and Salimans' w) it draws --num digits, the
same number of each class 0-9 (or of each of --classes), with DPM-Solver++(2M) in --steps
steps, and scores them with chapter 07's quality classifier (ddpm_lib.metrics, a different
network from the noise-aware classifier that classifier guidance uses): its accuracy against the
requested class (overall and per class), and the squared Frechet distance in its features to
the real test digits. The results file is rewritten after each point; a point already there is
skipped (resume). Each call is recorded in "runs" (command, machine, threads, torch, code
version, date); a point of some classes only lists them in "classes" (without it: all ten).
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # use this checkout's ddpm_lib

import torch  # noqa: E402
from provenance import code_version  # noqa: E402

from ddpm_lib.checkpoints import load_checkpoint, load_pretrained  # noqa: E402
from ddpm_lib.guidance import classifier_guidance, load_noisy_classifier  # noqa: E402
from ddpm_lib.metrics import as_classifier_input, load_digit_classifier, quality_table  # noqa: E402
from ddpm_lib.sampling import sample  # noqa: E402
from ddpm_lib.utils import get_device  # noqa: E402

DEFAULT_OUT = ROOT / "book" / "results" / "guidance_quality.json"
ALL_CLASSES = list(range(10))
DEFAULT_WEIGHTS = {"cg": [0, 1, 2, 4, 8, 16], "cfg": [0, 0.5, 1, 2, 4, 8]}


def draw(method: str, weight: float, args, device):
    """args.num guided digits, as many of each class of args.classes, and the classes asked for."""
    num, steps, batch, seed = args.num, args.steps, args.batch, args.seed
    labels = torch.tensor(args.classes).repeat_interleave(num // len(args.classes))
    if method == "cfg" and args.checkpoint is not None:
        model, schedule, _ = load_checkpoint(args.checkpoint, device=device)
    elif method == "cfg":
        model, schedule = load_pretrained("mnist_conditional", device=device)
    else:
        model, schedule = load_pretrained("mnist", device=device)
        classifier, _ = load_noisy_classifier()
        classifier = classifier.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for y in labels.split(batch):
        y = y.to(device)
        options = dict(num_steps=steps, solver="dpm_solver++", progress=False)
        if method == "cfg":
            options |= dict(labels=y, guidance=weight)
        else:
            options["eps_hook"] = classifier_guidance(classifier, schedule, y, weight)
        c = model.config
        shape = (len(y), c.in_channels, c.image_size, c.image_size)
        out.append(sample(model, schedule, shape, generator, **options).cpu())
    return torch.cat(out).clamp(-1, 1), labels


def point(method: str, weight: float, args, device, judge) -> dict:
    start = time.perf_counter()
    digits, labels = draw(method, weight, args, device)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        read = judge(as_classifier_input(digits)).argmax(1)
    right = read == labels
    table = quality_table(digits, judge)
    subset = {} if args.classes == ALL_CLASSES else {"classes": args.classes}
    return subset | {
        "method": method,
        "weight": weight,
        "num_samples": len(digits),
        "steps": args.steps,
        "seconds": round(seconds, 1),
        "accuracy": right.float().mean().item(),
        "accuracy_per_class": [right[labels == k].float().mean().item() for k in args.classes],
        "frechet_to_test": table["generated"]["frechet_distance"],
        "class_entropy_bits": table["generated"]["class_entropy_bits"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=("cg", "cfg"), required=True)
    p.add_argument("--weights", nargs="+", type=float)
    p.add_argument("--num", type=int, default=1000,
                   help="digits per point (a multiple of the number of classes)")  # fmt: skip
    p.add_argument("--classes", nargs="+", type=int, default=ALL_CLASSES,
                   help="draw only these classes (default: 0-9)")  # fmt: skip
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="default: cuda, else mps, else cpu")
    p.add_argument("--checkpoint", type=Path, help="cfg: this checkpoint, not the shipped one")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if not set(args.classes) <= set(ALL_CLASSES) or len(set(args.classes)) < len(args.classes):
        p.error("--classes must be distinct digits 0-9")
    if args.num % len(args.classes):
        p.error("--num must be a multiple of the number of classes (as many of each digit)")
    device = torch.device(args.device) if args.device else get_device()
    judge, _ = load_digit_classifier()
    results = json.loads(args.out.read_text()) if args.out.exists() else {"points": []}
    done = {
        (
            r["method"],
            r["weight"],
            r["num_samples"],
            r["steps"],
            tuple(r.get("classes", ALL_CLASSES)),
        )
        for r in results["points"]
    }
    results.setdefault("runs", []).append({
        "command": "python scripts/guidance_quality.py " + " ".join(argv or sys.argv[1:]),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "code": code_version(),
        "date": datetime.date.today().isoformat(),
    })  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for weight in args.weights or DEFAULT_WEIGHTS[args.method]:
        if (args.method, weight, args.num, args.steps, tuple(args.classes)) in done:
            continue
        row = point(args.method, weight, args, device, judge)
        print(json.dumps(row), flush=True)
        results["points"].append(row)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
