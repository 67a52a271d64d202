"""Shared fixtures. Fixture groups live in tests/plugins/ and are registered here."""

pytest_plugins = [
    "tests.plugins.bytecode",
    "tests.plugins.mqtt",
    "tests.plugins.kube",
    "tests.plugins.ec2",
    "tests.plugins.store",
    "tests.plugins.xdist",
    "tests.realkube",
    "tests.postgres",
]
