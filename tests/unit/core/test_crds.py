from pathlib import Path

import yaml

from trunk_operator.core.crdgen import all_crds, dump

CRDS = Path(__file__).resolve().parents[3] / "crds"


def test_checked_in_crds_match_the_models() -> None:
    """Regenerate with `make crds` when this fails."""
    for name, document in all_crds().items():
        assert (CRDS / name).read_text() == dump(document), f"crds/{name} is stale"


def test_crds_are_structural_and_carry_cel_rules() -> None:
    trunk = yaml.safe_load((CRDS / "twiliotrunks.yaml").read_text())
    version = trunk["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "$ref" not in str(spec) and "anyOf" not in str(spec)
    assert spec["x-kubernetes-validations"]
    assert spec["properties"]["codecs"]["default"] == ["ulaw", "alaw"]
    assert [c["name"] for c in version["additionalPrinterColumns"]][:2] == ["Ready", "Reason"]
    assert trunk["spec"]["names"]["categories"] == ["asterisk"]
