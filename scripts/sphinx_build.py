"""Build the book with Jupyter Book's Sphinx set-up and extra Sphinx settings on top.

    python scripts/sphinx_build.py BUILDER OUTDIR [-D name=JSON ...]

`jupyter-book build` reads _config.yml and _toc.yml, turns them into a Sphinx configuration and
runs Sphinx, but it cannot take Sphinx settings from the command line or choose the output
folder. The Chinese edition needs both (`language`, `locale_dirs`, an output folder inside the
English one), and so does extracting the message catalogues (no notebook execution). This script
makes the same call that `jupyter-book build . --all -W -n --keep-going` makes
(`jupyter_book.sphinx.build_sphinx` on the same _config.yml and _toc.yml, every page re-read,
nit-picky, warnings reported as errors at the end), with the settings given by -D applied last,
and writes the same index.html redirect to the root page for the html builder.

Examples (scripts/build_book.py and scripts/update_translations.py run these):

    python scripts/sphinx_build.py html _build/html/zh -D language='"zh_CN"' \\
        -D locale_dirs='["locales"]'
    python scripts/sphinx_build.py gettext _build/gettext -D nb_execution_mode='"off"'

Each -D value is JSON (a string needs its quotes); the doctrees go to _build/.doctrees-<name of
OUTDIR> (or --doctrees), apart from the English build's.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REDIRECT = '<meta http-equiv="Refresh" content="0; url={first_page}" />\n'


def parse_setting(text: str) -> tuple[str, object]:
    """'name=JSON' -> (name, value); a clear error for anything else."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected name=JSON, got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"the value of {name} is not JSON ({error}): write strings with quotes, "
            f"e.g. -D language='\"zh_CN\"'"
        ) from None


def build(
    builder: str,
    outdir: Path,
    settings: dict[str, object],
    warnings_are_errors: bool = True,
    quiet: bool = False,
    doctrees: Path | None = None,
) -> int:
    """Run Jupyter Book's Sphinx build of ROOT into `outdir`; return its exit status.

    `quiet` prints only the warnings; `doctrees` defaults to _build/.doctrees-<outdir's name>.
    """
    from jupyter_book.sphinx import build_sphinx

    overrides = {
        "external_toc_path": (ROOT / "_toc.yml").as_posix(),
        "nitpicky": True,
        "latex_individualpages": False,  # jupyter-book's CLI always passes it
        **settings,
    }
    doctrees = doctrees or ROOT / "_build" / f".doctrees-{outdir.name}"
    result = build_sphinx(
        ROOT,
        outdir,
        noconfig=True,
        path_config=str(ROOT / "_config.yml"),
        confoverrides=overrides,
        doctreedir=doctrees,
        builder=builder,
        freshenv=True,
        warningiserror=warnings_are_errors,
        keep_going=True,
        quiet=quiet,
    )
    if isinstance(result, Exception):  # build_sphinx has printed it
        return 1
    if result == 0 and builder == "html":
        root = yaml.safe_load((ROOT / "_toc.yml").read_text())["root"]
        (outdir / "index.html").write_text(REDIRECT.format(first_page=f"{root}.html"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builder", help="a Sphinx builder: html, gettext, ...")
    parser.add_argument("outdir", type=Path, help="the output folder (relative to the root)")
    parser.add_argument(
        "-D",
        dest="settings",
        action="append",
        type=parse_setting,
        default=[],
        metavar="NAME=JSON",
        help="a Sphinx setting, applied after _config.yml's",
    )
    parser.add_argument(
        "--warnings-ok", action="store_true", help="do not fail on warnings (-W is the default)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the warnings")
    parser.add_argument("--doctrees", type=Path, help="the doctree folder")
    args = parser.parse_args()
    os.chdir(ROOT)  # relative paths in _config.yml (the execution cache) are the root's
    outdir = args.outdir if args.outdir.is_absolute() else ROOT / args.outdir
    sys.exit(
        build(
            args.builder,
            outdir,
            dict(args.settings),
            warnings_are_errors=not args.warnings_ok,
            quiet=args.quiet,
            doctrees=args.doctrees and args.doctrees.absolute(),
        )
    )


if __name__ == "__main__":
    main()
