"""nbval settings for the course notebooks."""


def pytest_collectstart(collector):
    # stderr carries warnings with the kernel's PID and new DeprecationWarnings
    # after upgrades; it is never part of what a notebook teaches.
    if collector.path.suffix == ".ipynb":
        collector.skip_compare += ("stderr",)
