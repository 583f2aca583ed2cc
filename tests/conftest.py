import sys
from pathlib import Path

# Test helper modules (fixtures that rebuild official weights) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def s3_server():
    """One S3-compatible server (moto, 127.0.0.1) for the session; stopped by this fixture."""
    from s3_service import moto_s3_server

    with moto_s3_server() as server:
        yield server
