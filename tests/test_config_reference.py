"""docs/config-reference.md is generated from the config models and must match them."""

from pathlib import Path

from healer.config.reference import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "config-reference.md"


def test_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render(), (
        "docs/config-reference.md is stale: run `python -m healer.config.reference > docs/config-reference.md`"
    )


def test_reference_names_every_section() -> None:
    text = render()
    for key in (
        "`clusters`",
        "`unhealthyConditions`",
        "`maxUnhealthy`",
        "`stormCooldown`",
        "`rebootTimeout`",
        "`sharedGroup`",
        "`adminCidrs`",
        "`podSecurity`",
    ):
        assert key in text
