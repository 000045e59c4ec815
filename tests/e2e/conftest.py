"""The docker fixtures of the integration tests, shared with the end-to-end tests."""

from tests.integration.conftest import (  # noqa: F401 - fixtures are found by name
    base_image,
    ca_bundle,
    docker_client,
    skip_or_fail,
    torch_wheelhouse,
)
