"""Restoration quality of the shipped MNIST model, for chapter 11: denoising, inpainting and
super-resolution of test digits, each beside its baselines.

    python scripts/restoration_quality.py                  # the committed file: 100 digits
    python scripts/restoration_quality.py --num 20 --out /tmp/r.json   # a quick look

It restores --num test digits of the bundled mini_mnist test split (spread evenly over its
classes) with ddpm_lib.restoration, and scores them as the chapter does:

* denoising at each --sigmas: PSNR (clipped to [-1, 1]) and the shipped digit classifier's
  accuracy for the noisy digits, the best Gaussian blur (its width chosen on 256 digits of the
  training split), the one-step prediction and the chain of --denoise-steps steps;
* inpainting with the three masks of make_mask: the classifier's accuracy on the masked digits
  (missing pixels set to -1), on the replacement method's completions and on RePaint's
  (--resample, and each of --jumps), all with --steps steps a run;
* super-resolution 7x7 -> 28x28: consistency (RMS of downsample(result) - input) and
  accuracy for the blocks, bicubic interpolation, ILVR (--steps steps) and ILVR with RePaint's
  resampling (--resample, each of --jumps); and for each ILVR the diversity of four results
  for each of the first --diversity-inputs inputs (mean pairwise RMS).

Chapter 11 reads the committed file, book/results/restoration_quality.json.
"""

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # use this checkout's ddpm_lib

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ddpm_lib.checkpoints import load_pretrained  # noqa: E402
from ddpm_lib.data import load_images  # noqa: E402
from ddpm_lib.metrics import (  # noqa: E402
    classifier_accuracy,
    gaussian_blur,
    load_digit_classifier,
    psnr,
)
from ddpm_lib.restoration import (  # noqa: E402
    MASKS,
    denoise,
    downsample,
    inpaint,
    make_mask,
    noise_level_to_timestep,
    super_resolve,
    upsample,
)
from ddpm_lib.utils import get_device  # noqa: E402

DEFAULT_OUT = ROOT / "book" / "results" / "restoration_quality.json"
BLUR_WIDTHS = [round(0.3 + 0.1 * i, 1) for i in range(28)]  # 0.3 .. 3.0 pixels


def code_version() -> dict:
    """The commit of this checkout, and the tracked files under ddpm_lib/ and scripts/ that
    differ from it (the checkout may hold work in progress that this run did not use)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        changed = subprocess.run(["git", "diff", "--name-only", "HEAD", "--", "ddpm_lib",
                                  "scripts"], cwd=ROOT, check=True, capture_output=True,
                                 text=True).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "changed_files": []}
    return {"commit": commit, "changed_files": changed}


def spread(images, labels, n):
    """n test digits spread over the classes (the split is sorted by class)."""
    pick = torch.arange(n) * (len(images) // n)
    return images[pick], labels[pick]


def best_blur_width(held_out, sigma, generator) -> float:
    """The blur width with the highest mean PSNR on held-out digits with noise sigma."""
    noisy = held_out + sigma * torch.randn(held_out.shape, generator=generator)
    scores = [psnr(gaussian_blur(noisy, w).clamp(-1, 1), held_out).mean() for w in BLUR_WIDTHS]
    return BLUR_WIDTHS[int(torch.stack(scores).argmax())]


def denoising(model, schedule, accuracy, clean, labels, held_out, args, device):
    rows, gen = [], torch.Generator().manual_seed(args.seed)
    for sigma in args.sigmas:
        width = best_blur_width(held_out, sigma, gen)
        y = clean + sigma * torch.randn(clean.shape, generator=gen).to(device)
        dgen = torch.Generator(device=device).manual_seed(args.seed)
        results = {
            "noisy": y,
            "blur": gaussian_blur(y, width),
            "one_step": denoise(
                model, schedule, y, sigma, num_steps=1, solver="ddim", generator=dgen
            ),
            "chain": denoise(
                model, schedule, y, sigma, num_steps=args.denoise_steps, generator=dgen
            ),
        }
        rows.append(
            {
                "sigma": sigma,
                "t": noise_level_to_timestep(schedule, sigma)[0],
                "blur_width": width,
                "psnr": {k: psnr(x.clamp(-1, 1), clean).mean().item() for k, x in results.items()},
                "accuracy": {k: accuracy(x, labels) for k, x in results.items()},
            }
        )
        print(rows[-1], flush=True)
    return rows


def inpainting(model, schedule, accuracy, clean, labels, args, device):
    rows = []
    for kind in MASKS:
        mask = make_mask(kind, len(clean), generator=torch.Generator().manual_seed(1)).to(device)
        igen = torch.Generator(device=device).manual_seed(args.seed)
        results = {
            "masked": torch.where(mask.bool(), clean, -1.0),
            "replacement": inpaint(model, schedule, clean, mask, igen, num_steps=args.steps),
        }
        for jump in args.jumps:
            results[f"repaint_j{jump}"] = inpaint(
                model,
                schedule,
                clean,
                mask,
                igen,
                num_steps=args.steps,
                resample=args.resample,
                jump=jump,
            )
        known = mask.bool().expand_as(clean)
        for name in results.keys() - {"masked"}:
            if not torch.equal(results[name][known], clean[known]):
                raise AssertionError(f"{name} changed known pixels")
        rows.append(
            {
                "mask": kind,
                "missing_fraction": 1 - mask.mean().item(),
                "accuracy": {k: accuracy(x, labels) for k, x in results.items()},
            }
        )
        print(rows[-1], flush=True)
    return rows


def super_resolution(model, schedule, accuracy, clean, labels, args, device):
    x_low = downsample(clean, 4)
    sgen = torch.Generator(device=device).manual_seed(args.seed)
    settings = {"ilvr": (1, 1)} | {f"ilvr_resampled_j{j}": (args.resample, j) for j in args.jumps}
    results = {
        "blocks": upsample(x_low, 4),
        "bicubic": F.interpolate(x_low, size=28, mode="bicubic", align_corners=False),
        "original": clean,
    }
    diversity = {}
    k = args.diversity_inputs
    for name, (resample, jump) in settings.items():
        results[name] = super_resolve(
            model, schedule, x_low, sgen, num_steps=args.steps, resample=resample, jump=jump
        )
        several = super_resolve(
            model,
            schedule,
            x_low[:k].repeat_interleave(4, 0),
            sgen,
            num_steps=args.steps,
            resample=resample,
            jump=jump,
        ).view(k, 4, -1)
        pairwise = torch.cdist(several, several) / several.shape[-1] ** 0.5  # RMS distances
        diversity[name] = (pairwise.sum((1, 2)) / 12).mean().item()  # 12 ordered pairs
    out = {
        "consistency": {
            name: (downsample(x, 4) - x_low).pow(2).flatten(1).mean(1).sqrt().mean().item()
            for name, x in results.items()
        },
        "max_abs_consistency": {
            name: (downsample(results[name], 4) - x_low).abs().max().item() for name in settings
        },
        "accuracy": {name: accuracy(x, labels) for name, x in results.items()},
        "diversity": {
            "inputs": k,
            "results_per_input": 4,
            "mean_pairwise_rms": diversity,
        },
    }
    print(out, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=100, help="test digits (per mask)")
    p.add_argument("--steps", type=int, default=10, help="steps of one run down from T")
    p.add_argument("--denoise-steps", type=int, default=5, help="steps of the denoising chain")
    p.add_argument("--resample", type=int, default=3, help="RePaint's r")
    p.add_argument("--jumps", type=int, nargs="+", default=[1, 2], help="RePaint's j")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.5, 1.0, 2.0])
    p.add_argument("--diversity-inputs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="default: cuda, else mps, else cpu")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    start, code = time.perf_counter(), code_version()  # the code as the run begins
    device = torch.device(args.device) if args.device else get_device()
    model, schedule = load_pretrained("mnist", device=device)
    classifier, _ = load_digit_classifier()

    def accuracy(images, labels):
        return classifier_accuracy(classifier, images.clamp(-1, 1).cpu(), labels)

    test_images, test_labels = load_images("mini_mnist", split="test", return_labels=True)
    clean, labels = spread(test_images, test_labels, args.num)
    clean = clean.to(device)
    train_images = load_images("mini_mnist", split="train")
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))
    held_out = train_images[order[:256]]
    results = {
        "denoising": denoising(model, schedule, accuracy, clean, labels, held_out, args, device),
        "inpainting": inpainting(model, schedule, accuracy, clean, labels, args, device),
        "super_resolution": super_resolution(
            model, schedule, accuracy, clean, labels, args, device
        ),
    }
    results = {
        "about": {
            "command": "python scripts/restoration_quality.py " + " ".join(argv or sys.argv[1:]),
            "device": str(device),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "code": code["commit"],
            "changed_files": code["changed_files"],
            "date": datetime.date.today().isoformat(),
            "seconds": round(time.perf_counter() - start, 1),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "device")},
    } | results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out} in {results['about']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
