"""botocore service models for overair's own operations (the `overair` service).

Operations AWS has no equivalent for (revoking a code-signing certificate so that devices
stop trusting it, ...) live in a small JSON-protocol service of their own, described
by a botocore model in this directory. The server routes it like any AWS service, and
boto3 calls it once the directory is on botocore's data path:

    session = botocore.session.get_session()
    session.get_component("data_loader").search_paths.append(str(MODELS_DIR))
    client = boto3.Session(botocore_session=session).client("overair", endpoint_url=...)
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).parent
