"""How many times ddpm_lib reads a tensor's value back, per training step and per sampling step.

    python scripts/count_device_reads.py                   # this checkout's ddpm_lib
    python scripts/count_device_reads.py --commit b4cd3ff  # the ddpm_lib of an older commit

On a GPU each read is a wait for the queued work (see ddpm_lib.profiling.DeviceReads, which
counts them); the count does not depend on the device, so this runs on a CPU. With --commit,
that commit's ddpm_lib is exported (git archive) into a temporary folder and counted there,
with this checkout's counter: how the code of an older GPU run in book/perf/ waited.
"""

import argparse
import copy
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def device_reads_class():
    """DeviceReads from this checkout's ddpm_lib/profiling.py (it needs only torch)."""
    spec = importlib.util.spec_from_file_location("counter", ROOT / "ddpm_lib" / "profiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DeviceReads


def count(library: Path) -> None:
    """Print the reads of one step of each kind, with the ddpm_lib found in `library`."""
    sys.path.insert(0, str(library))
    import torch

    import ddpm_lib
    from ddpm_lib.fast import prepare_model
    from ddpm_lib.sampling import sample_progressive
    from ddpm_lib.schedules import NoiseSchedule, linear_betas
    from ddpm_lib.training import train_step
    from ddpm_lib.unet import UNet, UNetConfig

    if not Path(ddpm_lib.__file__).resolve().is_relative_to(library.resolve()):
        raise SystemExit(f"imported {ddpm_lib.__file__}, not the ddpm_lib of {library}")
    DeviceReads = device_reads_class()
    schedule = NoiseSchedule.from_betas(linear_betas(1000))
    model = UNet(UNetConfig.toy())
    optimizer = torch.optim.AdamW(model.parameters())
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 1, 14, 14, generator=generator) * 2 - 1
    steps = sample_progressive(model, schedule, (4, 1, 14, 14), generator, progress=False)
    next(steps)  # x_T: the loop's first step comes next
    cases = {
        "training step, the model": lambda: train_step(
            model, schedule, x0, optimizer, lr=1e-3, generator=generator
        ),
        "training step, ddpm_lib.fast.prepare_model's network": lambda: train_step(
            prepare_model(copy.deepcopy(model)),
            schedule,
            x0,
            optimizer,
            lr=1e-3,
            generator=generator,
        ),
        "sampling step, sample_progressive": lambda: next(steps),
    }
    print(f"ddpm_lib of {library}:")
    for name, fn in cases.items():
        with DeviceReads() as reads:
            fn()
        print(f"  {name}: {reads.count} reads  {dict(reads.where)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", help="count the ddpm_lib of this commit instead")
    parser.add_argument("--library", type=Path, help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    if args.library is not None or args.commit is None:
        count(args.library or ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", args.commit, "ddpm_lib"], cwd=ROOT, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        # A fresh interpreter, so that the old ddpm_lib is the one imported.
        child = [sys.executable, __file__, "--library", tmp]
        return subprocess.run(child, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
