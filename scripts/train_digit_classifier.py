"""Train the small digit classifier behind the book's quality figures, and save it as package data.

    python scripts/train_digit_classifier.py            # about a minute on a laptop CPU

It learns from 8,000 digits of the bundled mini_mnist train split (every ninth is kept back as an
unseen "real" set for the baseline), reports its accuracy on the mini_mnist test split,
and writes ddpm_lib/pretrained/mnist_classifier.safetensors (weights + that accuracy as metadata).
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, with or without ddpm_lib installed

import torch  # noqa: E402

from ddpm_lib.data import load_mini_mnist  # noqa: E402
from ddpm_lib.metrics import (  # noqa: E402
    CLASSIFIER_PATH,
    classifier_accuracy,
    reference_split,
    save_digit_classifier,
    train_digit_classifier,
)
from ddpm_lib.utils import count_parameters, seed_everything  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=CLASSIFIER_PATH)
    args = parser.parse_args()

    seed_everything(args.seed)
    images, labels = load_mini_mnist("train")
    test_images, test_labels = load_mini_mnist("test")
    train_idx, held_out_idx = reference_split(len(images))
    start = time.perf_counter()
    model = train_digit_classifier(
        images[train_idx],
        labels[train_idx],
        epochs=args.epochs,
        generator=torch.Generator().manual_seed(args.seed),
    )
    seconds = time.perf_counter() - start
    accuracy = classifier_accuracy(model, test_images, test_labels)
    held_out_accuracy = classifier_accuracy(model, images[held_out_idx], labels[held_out_idx])
    print(
        f"{count_parameters(model):,d} parameters, trained in {seconds:.0f} s on "
        f"{len(train_idx)} digits; test accuracy {accuracy:.4f} on {len(test_images)} digits, "
        f"{held_out_accuracy:.4f} on the {len(held_out_idx)} held-out train digits"
    )
    path = save_digit_classifier(
        model,
        args.out,
        test_accuracy=f"{accuracy:.4f}",
        held_out_accuracy=f"{held_out_accuracy:.4f}",
        trained_on="mini_mnist train split but every ninth digit (metrics.reference_split)",
        epochs=args.epochs,
        seed=args.seed,
        command="python scripts/train_digit_classifier.py",
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
