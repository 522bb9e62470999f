"""One jump from the book to the code and back: every labelled equation of the book that has code
behind it is cited, by its label, in that code's docstring (or comment), and every label the code
cites exists in the book."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABEL = re.compile(r"\$\$\s*\((eq-[a-z0-9-]+)\)")
CITED = re.compile(r"\((eq-[a-z0-9-]+)\)")

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


def cited_labels() -> set[str]:
    return {
        label
        for module in (ROOT / "ddpm_lib").glob("*.py")
        for label in CITED.findall(module.read_text())
    }


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
