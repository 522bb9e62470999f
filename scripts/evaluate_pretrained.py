"""Score a digit model's samples (chapter 07), beside the same figures for real digits and noise.

    python scripts/evaluate_pretrained.py                # the stored samples: seconds on a CPU
    python scripts/evaluate_pretrained.py --sample 1000  # new samples: about a minute on a GPU

By default it reads the pretrained checkpoint's folder, ddpm_lib/pretrained/mnist, and scores the
1,000 samples its training run stored there (eval_samples.npz). With --sample N it draws N new
samples from the checkpoint instead (1000 network evaluations each: use a GPU), and with
--save-samples FILE keeps them. The figures (ddpm_lib.metrics.quality_table): the digit
classifier's mean confidence, the entropy of its predicted classes, the Frechet distance in its
features to the mini_mnist test digits, and the distance to the nearest training digit.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # use this checkout's ddpm_lib

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ddpm_lib.checkpoints import load_checkpoint, pretrained_path  # noqa: E402
from ddpm_lib.metrics import (  # noqa: E402
    draw_digits,
    from_uint8,
    load_digit_classifier,
    quality_table,
    to_uint8,
)
from ddpm_lib.utils import PRECISIONS, autocast_dtype, get_device  # noqa: E402


def print_table(table: dict) -> None:
    print(f"{'':<10} {'n':>5} {'confidence':>11} {'class entropy':>14} {'Frechet d^2':>12}")
    for row in ("generated", "real", "noise"):
        q = table[row]
        print(
            f"{row:<10} {q['n']:>5} {q['confidence']:>11.3f} "
            f"{q['class_entropy_bits']:>10.2f} bits {q['frechet_distance']:>12.1f}"
        )
    nn = table["nearest_train_distance"]
    print(
        f"distance to the nearest training digit: {nn['generated']:.2f} from a sample, "
        f"{nn['test']:.2f} from a test digit"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=pretrained_path("mnist"))
    p.add_argument("--sample", type=int, default=0, help="draw this many new samples")
    p.add_argument("--samples", type=Path, help="score these stored samples (.npz, uint8)")
    p.add_argument("--save-samples", type=Path, help="with --sample: keep them here (.npz)")
    p.add_argument("--out", type=Path, help="write the table here (JSON)")
    p.add_argument("--device", help="default: cuda, else mps, else cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16",
                   help="autocast dtype for sampling on a GPU")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    about = {"checkpoint": str(args.checkpoint)}
    if args.sample > 0:
        device = torch.device(args.device) if args.device else get_device()
        model, schedule, info = load_checkpoint(args.checkpoint, device=device)
        start = time.perf_counter()
        digits = draw_digits(model, schedule, args.sample, seed=args.seed,
                             amp_dtype=autocast_dtype(args.precision, device))  # fmt: skip
        seconds = round(time.perf_counter() - start, 1)
        about |= {"sampled": args.sample, "seconds": seconds, "device": str(device),
                  "precision": args.precision, "step": info["step"]}  # fmt: skip
        if args.save_samples:
            np.savez_compressed(args.save_samples, images=to_uint8(digits).numpy())
    else:
        path = args.samples or args.checkpoint / "eval_samples.npz"
        if not path.exists():
            sys.exit(f"no stored samples at {path}: pass --sample N to draw some (on a GPU)")
        with np.load(path) as f:
            digits = from_uint8(f["images"])
        about["samples"] = str(path)
    if digits.dim() == 3:
        digits = digits[:, None]
    classifier, classifier_info = load_digit_classifier()
    table = quality_table(digits, classifier)
    table["about"] = about | {"classifier": classifier_info}
    print_table(table)
    if args.out:
        args.out.write_text(json.dumps(table, indent=1) + "\n")
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
