"""Train the noise-aware digit classifier p(y | x_t, t) that chapter 10 guides with, and ship it.

    python scripts/train_noisy_classifier.py            # minutes on a laptop CPU
    python scripts/train_noisy_classifier.py --steps 20 --out /tmp/c.safetensors   # a quick try

It learns from the same 8,000 bundled mini_mnist train digits as the quality classifier of
chapter 07 (ddpm_lib.metrics.reference_split), each noised by q_sample at a random t of the
shipped MNIST model's schedule, and writes ddpm_lib/pretrained/noisy_digit_classifier.safetensors
with its accuracy on the 1,000 test digits at several t (as metadata). It is a different
network from the quality classifier, so that guided samples are scored by a classifier that did
not guide them.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, with or without ddpm_lib installed

import torch  # noqa: E402

from ddpm_lib.data import load_mini_mnist  # noqa: E402
from ddpm_lib.forward import q_sample  # noqa: E402
from ddpm_lib.guidance import (  # noqa: E402
    NOISY_CLASSIFIER_PATH,
    NoisyClassifier,
    save_noisy_classifier,
    train_noisy_classifier,
)
from ddpm_lib.metrics import reference_split  # noqa: E402
from ddpm_lib.schedules import NoiseSchedule, linear_betas  # noqa: E402
from ddpm_lib.utils import count_parameters, seed_everything  # noqa: E402

EVAL_T = (1, 100, 300, 500, 700, 900)


def accuracy_at(model, schedule, images, labels, t: int, generator) -> float:
    """The classifier's accuracy on `images` noised to step t."""
    with torch.no_grad():
        xt = q_sample(schedule, images, t, generator=generator)
        pred = model(xt, torch.full((len(images),), t)).argmax(1)
    return (pred == labels).float().mean().item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=NOISY_CLASSIFIER_PATH)
    args = parser.parse_args(argv)

    seed_everything(args.seed)
    schedule = NoiseSchedule.from_betas(linear_betas(1000))  # the shipped model's schedule
    images, labels = load_mini_mnist("train")
    train_idx, _ = reference_split(len(images))
    test_images, test_labels = load_mini_mnist("test")
    model = NoisyClassifier()
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    losses = train_noisy_classifier(
        model, schedule, images[train_idx], labels[train_idx], args.steps,
        batch_size=args.batch, generator=generator,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    model.eval()
    gen = torch.Generator().manual_seed(1)
    accuracy = {t: accuracy_at(model, schedule, test_images, test_labels, t, gen) for t in EVAL_T}
    print(f"{count_parameters(model):,d} parameters, {args.steps} steps in {seconds:.0f} s; "
          f"last loss {sum(losses[-100:]) / len(losses[-100:]):.3f}")  # fmt: skip
    for t, acc in accuracy.items():
        print(f"  test accuracy at t = {t:3d}: {acc:.3f}")
    path = save_noisy_classifier(
        model, args.out, test_accuracy_by_t=json.dumps(accuracy), steps=args.steps,
        batch=args.batch, seed=args.seed, seconds=round(seconds),
        trained_on="mini_mnist train split but every ninth digit (metrics.reference_split)",
        command="python scripts/train_noisy_classifier.py" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
    )  # fmt: skip
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
