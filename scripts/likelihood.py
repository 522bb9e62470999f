"""The variational bound of the shipped MNIST model on held-out digits, in bits per dimension.

    nice -n 10 python scripts/likelihood.py   # the committed results file (its wall time inside)
    python scripts/likelihood.py --digits 20 --terms 4 --exact 0 --out /tmp/l.json   # a quick look

It evaluates L = L_T + sum_{t>=2} L_{t-1} + L_0 (ddpm_lib.losses.bits_per_dim, chapter 05) for the
first digits of the bundled mini_mnist test split, which the model's training never saw, with
sigma_t^2 = beta_tilde_t ("fixed_small", the book's sampler) and the decoder of Ho et al. Eq. 13:

- "uniform t": for each of --digits digits, --terms timesteps drawn uniformly from 2..T, and the
  sum of the L_{t-1} estimated without bias by (T - 1) times the mean of their terms;
- "all terms": for each of the first --exact digits, every L_{t-1} (T - 1 model calls a digit).

Each estimate comes with the standard error of its mean over the digits (std / sqrt(N)), which
covers the spread of the digits and of the draws. Chapter 05 reads the committed file
(book/results/likelihood_mnist.json).
"""

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # use this checkout's ddpm_lib

import torch  # noqa: E402
from provenance import code_version  # noqa: E402

from ddpm_lib.data import load_images  # noqa: E402
from ddpm_lib.losses import bits_per_dim  # noqa: E402
from ddpm_lib.training import load_pretrained  # noqa: E402

DEFAULT_OUT = ROOT / "book" / "results" / "likelihood_mnist.json"


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarise(bound, terms) -> dict:
    """Means over the digits of each part, and the standard error of the total's mean."""
    n = bound.total.shape[0]
    return {
        "num_digits": n,
        "terms": terms,
        "total_mean": bound.total.mean().item(),
        "total_se": (bound.total.std().item() / math.sqrt(n)) if n > 1 else float("nan"),
        "prior_mean": bound.prior.mean().item(),
        "kl_terms_mean": bound.kl_terms.mean().item(),
        "decoder_mean": bound.decoder.mean().item(),
        "total_per_digit": [round(v, 5) for v in bound.total.tolist()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--digits", type=int, default=200, help="digits for the uniform-t estimate"
    )
    parser.add_argument("--terms", type=int, default=10, help="timesteps drawn per digit")
    parser.add_argument("--exact", type=int, default=20, help="digits with every term summed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, schedule = load_pretrained("mnist")
    digits = load_images("mini_mnist", split="test")
    gen = torch.Generator().manual_seed(args.seed)
    estimates = {}
    if args.digits:
        bound = bits_per_dim(
            model, schedule, digits[: args.digits], num_terms=args.terms, generator=gen
        )
        estimates["uniform t"] = summarise(bound, f"{args.terms} drawn uniformly from 2..T")
        print("uniform t:", {k: v for k, v in estimates["uniform t"].items() if k[-5:] != "digit"})
    if args.exact:
        bound = bits_per_dim(model, schedule, digits[: args.exact], num_terms=None, generator=gen)
        estimates["all terms"] = summarise(bound, f"all {schedule.num_timesteps - 1}")
        print("all terms:", {k: v for k, v in estimates["all terms"].items() if k[-5:] != "digit"})
    about = {
        "command": "python scripts/likelihood.py " + " ".join(sys.argv[1:]),
        "device": f"CPU ({cpu_name()})",
        "cpu_threads": args.threads,
        "torch": torch.__version__,
        "code": code_version(),
        "date": datetime.date.today().isoformat(),
        "seconds": round(time.perf_counter() - start, 1),
        "data": "mini_mnist test split (1,000 digits; the first N), 8-bit values in [-1, 1]",
        "model": "ddpm_lib.training.load_pretrained('mnist'), variance fixed_small",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"about": about, "estimates": estimates}, indent=1) + "\n")
    print(f"wrote {args.out} in {about['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
