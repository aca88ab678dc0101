def pytest_configure(config):
    # The deploy tier: what a newcomer runs as the README gives it (`make run`'s stack, `make loadtest`).
    config.addinivalue_line("markers", "deploy: a documented command run as given, against make run's stack")
