"""Where a results file came from: the code version of this checkout, for the scripts that
write the committed results (sampling_quality, guidance_quality, likelihood, run_notebooks)."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """The commit of this checkout, with "+changes" if ddpm_lib or scripts differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "ddpm_lib", "scripts"],
                               cwd=ROOT).returncode  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")
