"""Hypothesis strategies shared by the device agent's fuzz targets (issue 12): hostile
text and JSON values of the kind a server or broker could send."""

from __future__ import annotations

from hypothesis import strategies as st

# Text that stresses decoders: non-ASCII and full-width digits, base64's alphabet,
# lone surrogates (what JSON's \ud800 escapes decode to), control characters.
HOSTILE_TEXT = st.text(alphabet=st.sampled_from(
    [*"AZaz09+/=-_ ./\\\n\x00", "\u00e9", "\uff10", "\u0660", "\ud800", "\udfff", "\U0001f600"]),
    max_size=40)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | HOSTILE_TEXT)
KEYS = HOSTILE_TEXT | st.sampled_from(["afr_ota", "files", "protocols", "overair", "signer_chain",
                                       "execution", "jobId", "jobDocument", "statusDetails",
                                       "executionNumber"])
JSON_VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(KEYS, children, max_size=4), max_leaves=20)
