"""The README's "Reliability" section states the size of the adversarial corpus as the corpus counts it."""

from __future__ import annotations

from tests import corpus
from tests.conftest import ROOT


def test_the_readme_states_the_number_of_adversarial_cases():
    section = (ROOT / "README.md").read_text().split("## Reliability")[1].split("\n## ")[0]
    assert f"**{corpus.count()} adversarial cases**" in section
