"""ddpm_lib: the code of the DDPM book, exported from its chapters (notebooks/).

Each module is written by the notebooks named in its header; edit those, then run `make export`.
"""

__version__ = "0.1.0"
