"""One jump from the book to the code and back: every labelled equation of the book that has code
behind it is cited, by its label, in that code's docstring, beside the paper's equation where a
paper has one; and every label the code cites exists in the book."""

import ast
import json
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABEL = re.compile(r"\$\$\s*\((eq-[a-z0-9-]+)\)")
CITED = re.compile(r"\((eq-[a-z0-9-]+)\)")
# How the docstrings name a paper's equation, algorithm or section: "Ho et al. Eq. 11",
# "Song et al. Eqs. 12, 16", "Nichol and Dhariwal Eq. 17", "Ho and Salimans", ...
PAPER = re.compile(r"et al\.|Nichol\s+and\s+Dhariwal|Dhariwal\s+and\s+Nichol|Ho\s+and\s+Salimans")

# Labelled equations with no library code of their own, and why.
NO_CODE = {
    "eq-markov-property": "chapter 01's Markov chains are checked in the chapter; no library code",
    "eq-markov-joint": "chapter 01 (see above)",
    "eq-markov-propagate": "chapter 01 (see above)",
    "eq-markov-stationary": "chapter 01 (see above)",
    "eq-gauss-chain": "chapter 01 (see above)",
    "eq-chain-moments": "chapter 01 (see above)",
    "eq-chain-unrolled": "chapter 01 (see above)",
    "eq-chain-forget": "chapter 01 (see above)",
    "eq-sum-gaussians": "a step of the proof of the closed form, eq-closed-form",
    "eq-induction-step": "a step of the proof of the closed form, eq-closed-form",
    "eq-variance-recursion": "a step of the proof of the closed form, eq-closed-form",
    "eq-snr": "the SNR is plotted by chapter 03 from the schedule's tables; no function",
    "eq-xt-from-x0": "chapter 03's closed form restated in chapter 04 (q_sample: eq-q-sample)",
    "eq-bayes": "a step of the derivation of the posterior (eq-posterior-mean, -variance)",
    "eq-vlb": "the bound itself; its terms are computed (eq-vlb-terms, eq-prior-kl)",
    "eq-vlb-rewritten": "a step from Ho et al. Eq. 3 to Eq. 5 (the terms: eq-vlb-terms)",
    "eq-l-t-eps": "a step from eq-l-t-mean to eq-l-simple, whose code cites both ends",
    "eq-eps-score": "an identity checked by chapter 09 with autograd; the code works in eps",
    "eq-gaussian-conditioning": "the fact behind the posterior, checked by chapter 04's cells",
    "eq-bayes-step": "a step of the telescoping from Ho et al. Eq. 3 to Eq. 5 (chapter 05)",
    "eq-telescope": "the telescoping itself, checked by chapter 05 with log densities",
}


def book_labels() -> dict[str, str]:
    """Each label defined by display math in a notebook or book page, with its page."""
    labels = {}
    pages = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md"))
    for page in pages:
        if page.suffix == ".ipynb":
            cells = json.loads(page.read_text())["cells"]
            text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        else:
            text = page.read_text()
        for label in LABEL.findall(text):
            labels[label] = page.name
    return labels


# Labelled equations whose code has no paper equation to cite beside the book's, and why.
NO_PAPER = {
    "eq-attention": "Ho et al. describe their attention block in words (Appendix B)",
    "eq-resblock": "Ho et al. describe their residual block in words (Appendix B)",
    "eq-ema": "Ho et al. give only the decay, 0.9999 (Appendix B); the warm-up is the book's",
    "eq-ddim-invert": "Song et al. describe the encoding in words (their Sec. 5.4)",
    "eq-gaussian-kl": "the textbook KL divergence of two Gaussians",
    "eq-gaussian-oracle": "the book's exact predictor for Gaussian data",
    "eq-oracle": "the book's exact predictor for a mixture (chapter 08)",
    "eq-noise-level": "the book's noise level of the VP forward process (chapter 11)",
    "eq-psnr": "the textbook PSNR",
    "eq-toy-time-embedding": "the book's toy model (chapter 05)",
    "eq-timesteps": "diffusers' timestep_spacing options (compared by Lin et al. in words)",
}


def docstring_citations() -> dict[str, list[str]]:
    """Each book label cited in a docstring of ddpm_lib (module, class or function): the
    docstrings that cite it."""
    cited = defaultdict(list)
    for module in sorted((ROOT / "ddpm_lib").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            doc = ast.get_docstring(node) if isinstance(node, kinds) else None
            for label in CITED.findall(doc or ""):
                cited[label].append(doc)
    return cited


def cited_labels() -> set[str]:
    return set(docstring_citations())


def test_every_equation_with_code_is_cited_in_it():
    labels, cited = book_labels(), cited_labels()
    assert len(labels) > 40  # the book has its equations (a broken pattern would find none)
    missing = sorted(set(labels) - cited - set(NO_CODE))
    assert not missing, f"labelled equations not cited by the code behind them: {missing}"


def test_every_cited_label_exists_and_no_exemption_is_stale():
    labels, cited = book_labels(), cited_labels()
    assert not sorted(cited - set(labels)), "the code cites labels the book does not define"
    assert not sorted(set(NO_CODE) - set(labels)), "exemptions for labels that no longer exist"
    assert not sorted(set(NO_CODE) & cited), "exempted labels that the code does cite"


def test_the_code_of_an_equation_cites_the_paper_s_too():
    """Where a paper has the equation, one of the docstrings citing the label also names it."""
    without = sorted(
        label
        for label, docs in docstring_citations().items()
        if label not in NO_PAPER and not any(PAPER.search(doc) for doc in docs)
    )
    assert not without, f"cited by the book's label only, with no paper equation: {without}"
    assert not sorted(set(NO_PAPER) - cited_labels()), "exemptions for labels no code cites"
