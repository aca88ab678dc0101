import logging

import structlog


def pytest_configure(config):
    # Services log at warning level in tests; pytest shows the lines of a failing test.
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
