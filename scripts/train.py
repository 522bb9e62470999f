"""Train a DDPM preset from the command line: the full-size runs of chapter 07.

The same command as the console script `ddpm-train` (ddpm_lib.cli.train_main), for a checkout
with or without ddpm_lib installed; `--help` lists the options.

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

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # use this checkout's ddpm_lib

from ddpm_lib.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
