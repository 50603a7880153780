import pytest

from tests.launch.cli import write_tiny_cifar


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    """The official python batches, 64 random examples each (320 train, 64 test)."""
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"))
