"""The closed vocabularies: the API doc lists exactly the enums the device and backend share."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.vocabulary import EndReason, Trigger

pytestmark = pytest.mark.unit

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.mark.parametrize(("field", "vocabulary"), [("trigger", Trigger), ("reason", EndReason)])
def test_the_api_doc_lists_each_vocabulary_exactly(
    field: str, vocabulary: type[Trigger] | type[EndReason]
) -> None:
    row = next(
        line for line in API_DOC.read_text().splitlines() if line.startswith(f"| `{field}` |")
    )
    listed = re.findall(r"`([a-z_]+)`", row.split("|")[2])
    assert sorted(listed) == sorted(member.value for member in vocabulary)
