"""ddpm_lib: the code of the DDPM book, exported from its chapters (notebooks/).

Each module is written by the notebooks named in its header; edit those, then run `make export`.
"""

__version__ = "0.1.0"

# ddpm_lib.solvers registers DDIM and DPM-Solver++ with the sampling loop (sampling.SOLVERS).
from ddpm_lib import solvers as _solvers  # noqa: E402, F401
