"""Suite-wide pytest configuration: registers the fixtures that start real components."""

pytest_plugins = ["tests.fixtures.dockerd", "tests.fixtures.sshd"]
