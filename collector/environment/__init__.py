"""Environment "one map": dust and boiler sites, threshold alarms and their REST API.

Wiring (see docs/hj212.md): add `MIGRATIONS` to collector.migrations, build an
`EnvironmentMonitor(store, load_environment_config(config.sites), on_alarm=...)`, pass its
`on_stored` to Ingest, and `install(app, monitor)`.
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
