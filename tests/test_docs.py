"""The generated spec reference is the committed one: the spec models are its one source."""

from __future__ import annotations

from conftest import ROOT
from rayline.spec.reference import render


def test_docs_spec_md_is_generated_from_the_spec_models() -> None:
    committed = (ROOT / "docs" / "spec.md").read_text()
    assert committed == render(), "docs/spec.md is stale: run `make docs`"


def test_every_field_of_every_spec_is_described() -> None:
    undescribed = [line.split("|")[1].strip() for line in render().splitlines()
                   if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert undescribed == []
