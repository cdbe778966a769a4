"""The five DataLoader sensors; each module builds its sensor from Settings."""

import dagster as dg

from dagsters.settings import Settings


def default_status(settings: Settings) -> dg.DefaultSensorStatus:
    """RUNNING when the settings say so (locally by default), else STOPPED for a person to start."""
    if settings.sensors_running:
        return dg.DefaultSensorStatus.RUNNING
    return dg.DefaultSensorStatus.STOPPED
