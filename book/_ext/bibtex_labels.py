"""Alpha citation labels that survive authors with no Latin letters.

pybtex's alpha labels keep only the letters A-Z of the authors' names, so an author named in
Chinese (the blog article that chapter 08 takes apart, by "禅与计算机程序设计艺术") gets an empty
label. This style labels such an entry by its `key` field instead, with the year as usual.
"""

from pybtex.plugin import register_plugin
from pybtex.style.formatting.alpha import Style as AlphaStyle
from pybtex.style.labels.alpha import LabelStyle as AlphaLabelStyle


class KeyFallbackLabelStyle(AlphaLabelStyle):
    """pybtex's alpha labels, or the entry's `key` field where the names give no letters."""

    def format_label(self, entry):
        label = super().format_label(entry)
        year = entry.fields.get("year", "")[-2:]
        if label == year and "key" in entry.fields:
            return entry.fields["key"] + year
        return label


class Style(AlphaStyle):
    default_label_style = KeyFallbackLabelStyle


def setup(app):
    register_plugin("pybtex.style.formatting", "alpha_key", Style)
    return {"parallel_read_safe": True}
