"""Environment "one map": dust and boiler sites, threshold alarms and their REST API.

Wiring (collector/features.py, docs/collector-internals.md): the `Environment` adapter declares
`MIGRATIONS`, builds an `EnvironmentMonitor(store, load_environment_config(config.sites),
on_alarm=...)`, calls its `on_stored` from the stored-batch hook, and `install(app, monitor)`.
"""

from collector.environment.api import install, router
from collector.environment.config import (
    EnvironmentConfig,
    Limits,
    Site,
    load_environment_config,
)
from collector.environment.monitor import EnvAlarm, EnvironmentMonitor
from collector.environment.tables import MIGRATIONS, env_alarms

__all__ = [
    "MIGRATIONS",
    "EnvAlarm",
    "EnvironmentConfig",
    "EnvironmentMonitor",
    "Limits",
    "Site",
    "env_alarms",
    "install",
    "load_environment_config",
    "router",
]
