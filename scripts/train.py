"""Train a DDPM preset from the command line: the full-size runs of chapter 07.

    python scripts/train.py --preset mnist --data mnist --out runs/mnist --max-minutes 30
    python scripts/train.py --preset toy --data mini_mnist --out runs/toy --steps 50
    python scripts/train.py --preset toy --data my_images/ --out runs/mine --steps 50
    python scripts/train.py --preset mnist_conditional --data mnist --out runs/mnist_conditional
    python scripts/train.py --preset toy --conditional --out runs/toy_conditional --steps 50
    torchrun --nproc_per_node 4 scripts/train.py --preset ddpm_cifar10 --out runs/cifar10

Under torchrun, each of the processes (one per GPU) trains on its share of every batch of
--batch-size images (the global batch, whatever the number of processes) with
DistributedDataParallel, and only process 0 prints and writes files (chapter 20). The fast path's
switches (--channels-last, --compile, --fused-adam) are off by default.

A class-conditional preset (mnist_conditional), or any preset with --conditional, trains on the
data set's labels (a folder needs one subfolder per class), with label dropout for
classifier-free guidance (chapter 10): --label-dropout, or the preset's (0.1 if it has none).

Writes into --out: log.jsonl (one JSON record per log line: step, loss, lr, images/s),
checkpoint/ (EMA weights + config + training state; the run resumes from it when the command is
run again) and samples/step_NNNNNNN.png. With --export DIR it also writes the checkpoint to share:
DIR/model.safetensors (EMA weights in float16), DIR/config.json (with the command, wall time and
hardware), DIR/log.jsonl and DIR/samples.png (64 samples of the exported weights); with
--eval-samples N also DIR/eval_samples.npz (N samples, uint8) and DIR/quality.json (the quality
figures of chapter 07 for digit models). Runs from a checkout with or without ddpm_lib installed.
"""

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # use this checkout's ddpm_lib

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ddpm_lib.batches import fit_images  # noqa: E402
from ddpm_lib.checkpoints import export_checkpoint, load_checkpoint, save_image_grid  # noqa: E402
from ddpm_lib.data import DATASETS, load_images  # noqa: E402
from ddpm_lib.distributed import init_distributed  # noqa: E402
from ddpm_lib.sampling import sample  # noqa: E402
from ddpm_lib.schedules import NoiseSchedule, linear_betas  # noqa: E402
from ddpm_lib.training import PRESETS, preset, train  # noqa: E402
from ddpm_lib.unet import UNet  # noqa: E402
from ddpm_lib.utils import (  # noqa: E402
    PRECISIONS,
    autocast_dtype,
    count_parameters,
    default_precision,
    get_device,
    seed_everything,
)

DEFAULT_DATA = {
    "toy": "mini_mnist",
    "mnist": "mnist",
    "mnist_conditional": "mnist",
    "ddpm_cifar10": "cifar10",
}
CFG_LABEL_DROPOUT = 0.1  # --conditional's label dropout for a preset without one


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=PRESETS, default="mnist")
    p.add_argument(
        "--data",
        help=f"one of {', '.join(DATASETS)}, or a folder of images (with or without one "
        "subfolder per class), centre-cropped and resized to the preset's image size and "
        "converted to its channels; default: the preset's data set (mnist for mnist)",
    )
    p.add_argument("--out", type=Path, required=True, help="the run's folder")
    p.add_argument("--steps", type=int, help="total gradient steps (default: the preset's)")
    p.add_argument("--max-minutes", type=float, help="wall-time budget of the training loop")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="auto: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on a CPU",
    )
    p.add_argument(
        "--conditional",
        action="store_true",
        help="train a class-conditional U-Net on the data's labels (implied by a conditional "
        "preset such as mnist_conditional)",
    )
    p.add_argument(
        "--label-dropout",
        type=float,
        help="probability of training a step's label as 'no label' (classifier-free guidance); "
        f"default: the preset's, or {CFG_LABEL_DROPOUT} with --conditional",
    )
    p.add_argument("--channels-last", action="store_true", help="fast path: channels-last")
    p.add_argument("--compile", action="store_true", help="fast path: torch.compile the U-Net")
    p.add_argument("--fused-adam", action="store_true", help="fast path: fused AdamW")
    p.add_argument("--log-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--sample-every", type=int)
    p.add_argument("--sample-images", type=int, help="images per sample grid (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="default: cuda, else mps, else cpu")
    p.add_argument(
        "--no-resume", action="store_true", help="start afresh even if out/checkpoint exists"
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--export", type=Path, help="write the float16 checkpoint to share here")
    p.add_argument("--eval-samples", type=int, default=0, help="with --export: samples to score")
    args = p.parse_args(argv)
    if args.data is not None and args.data not in DATASETS and not Path(args.data).is_dir():
        p.error(f"--data {args.data!r} is neither a data set ({', '.join(DATASETS)}) nor a folder")
    return args


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    procs = init_distributed()  # process 0 of 1 unless started by torchrun
    say = print if procs.is_main else (lambda *a, **k: None)  # only process 0 prints
    seed_everything(args.seed)  # the weights' initialisation
    device = torch.device(args.device) if args.device else get_device()
    if device.type == "cuda" and procs.world_size > 1:
        device = torch.device("cuda", procs.local_rank)  # one GPU per process
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
    unet_config, config = preset(args.preset)
    overrides = {
        "num_steps": args.steps, "max_minutes": args.max_minutes, "batch_size": args.batch_size,
        "lr": args.lr, "log_every": args.log_every, "checkpoint_every": args.checkpoint_every,
        "sample_every": args.sample_every, "num_sample_images": args.sample_images,
    }  # fmt: skip
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    precision = default_precision(device) if args.precision == "auto" else args.precision
    config = replace(config, seed=args.seed, precision=precision,
                     channels_last=args.channels_last, compile=args.compile,
                     fused_adam=args.fused_adam)  # fmt: skip
    conditional = args.conditional or unet_config.num_classes is not None
    data_name = args.data or DEFAULT_DATA[args.preset]

    if procs.world_size > 1 and not procs.is_main:
        torch.distributed.barrier()  # let process 0 download the data set first
    if data_name in DATASETS:
        loaded = load_images(data_name, "train", return_labels=conditional)
    else:  # a folder of images, read at the model's size and channels
        loaded = load_images(
            Path(data_name),
            image_size=unet_config.image_size,
            channels=unet_config.in_channels,
            return_labels=conditional,
        )
    if procs.world_size > 1 and procs.is_main:
        torch.distributed.barrier()
    images, labels = loaded if conditional else (loaded, None)
    if conditional:
        num_classes = unet_config.num_classes or int(labels.max()) + 1
        unet_config = replace(unet_config, num_classes=num_classes)
        dropout = args.label_dropout
        if dropout is None:
            dropout = config.label_dropout or CFG_LABEL_DROPOUT
        config = replace(config, label_dropout=dropout)
    elif args.label_dropout:
        sys.exit("--label-dropout drops class labels: use it with --conditional")
    if images.shape[1] != unet_config.in_channels:
        sys.exit(f"{data_name} has {images.shape[1]} channel(s); the {args.preset} preset takes "
                 f"{unet_config.in_channels}")  # fmt: skip
    data = fit_images(images, unet_config.image_size)
    schedule = NoiseSchedule.from_betas(linear_betas(unet_config.num_timesteps))
    model = UNet(unet_config).to(device)
    budget = f" or {config.max_minutes} min" if config.max_minutes else ""
    processes = f" x {procs.world_size} processes" if procs.world_size > 1 else ""
    classes = (
        f"; class-conditional on {unet_config.num_classes} classes, label dropout "
        f"{config.label_dropout}"
        if conditional
        else ""
    )
    say(
        f"preset {args.preset}: {count_parameters(model):,d} parameters; data {data_name} "
        f"{tuple(data.shape)}{classes}; {device} ({hardware(device)}){processes}, "
        f"{config.precision}; up to {config.num_steps} steps{budget}",
        flush=True,
    )

    history = train(model, schedule, data, config, out_dir=args.out, resume=not args.no_resume,
                    progress=not args.no_progress, labels=labels)  # fmt: skip
    train_seconds = history.records[-1]["elapsed_s"] if history.records else 0.0
    rates = [r["images_per_s"] for r in history.records[1:]] or [0.0]
    summary = {
        "command": "python scripts/train.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "preset": args.preset,
        "data": data_name,
        "num_classes": unet_config.num_classes,
        "steps": history.step,
        "stopped_by": history.stopped,
        "train_wall_time_s": round(train_seconds, 1),
        "images_per_s_median": round(float(np.median(rates)), 1),
        "final_loss": history.records[-1]["loss"] if history.records else None,
        "hardware": hardware(device) + (f" x {procs.world_size}" if procs.world_size > 1 else ""),
        "precision": config.precision,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    say(json.dumps(summary, indent=1), flush=True)

    if args.export is not None and procs.is_main:
        export(args, history, summary, device, config, started)
    say(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    if procs.world_size > 1:
        torch.distributed.destroy_process_group()
    return 0


def export(args, history, summary, device, config, started) -> None:
    """Write the float16 checkpoint to share, its log, a sample grid and (optionally) scores."""
    dest = export_checkpoint(args.out / "checkpoint", args.export, torch.float16, extra=summary)
    shutil.copy(args.out / "log.jsonl", dest / "log.jsonl")
    summary["train_config"] = asdict(config)
    (dest / "run.json").write_text(json.dumps(summary, indent=1) + "\n")  # again at the end
    model, schedule, _ = load_checkpoint(dest, device=device)  # the shipped float16 weights
    amp_dtype = autocast_dtype(config.precision, device)
    n, num_classes = config.num_sample_images or 64, model.config.num_classes
    shape = (n, model.config.in_channels, model.config.image_size, model.config.image_size)
    generator = torch.Generator(device=device).manual_seed(0)
    labels = None if num_classes is None else torch.arange(n, device=device) % num_classes
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        grid = sample(
            model, schedule, shape, generator, labels=labels, progress=not args.no_progress
        )
    save_image_grid(grid, dest / "samples.png")
    print("wrote", dest / "samples.png", flush=True)
    if args.eval_samples > 0:
        from ddpm_lib.metrics import draw_digits, load_digit_classifier, quality_table, to_uint8

        start = time.perf_counter()
        digits = draw_digits(model, schedule, args.eval_samples, amp_dtype=amp_dtype,
                             progress=not args.no_progress)  # fmt: skip
        seconds = time.perf_counter() - start
        np.savez_compressed(dest / "eval_samples.npz", images=to_uint8(digits).numpy())
        classifier, classifier_info = load_digit_classifier()
        quality = quality_table(digits, classifier)
        quality["about"] = {
            "samples": args.eval_samples, "sampling_s": round(seconds, 1),
            "sampling_precision": config.precision, "classifier": classifier_info,
            "command": summary["command"],
        }  # fmt: skip
        (dest / "quality.json").write_text(json.dumps(quality, indent=1) + "\n")
        print(json.dumps({k: quality[k] for k in ("generated", "real", "noise")}, indent=1))
    summary["total_wall_time_s"] = round(time.perf_counter() - started, 1)
    (dest / "run.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
