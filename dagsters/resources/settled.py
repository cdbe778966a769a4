"""Resources as Dagster sees them: built from ``Settings``, with no config a launch could set.

A ``ConfigurableResource`` built with values exposes those values as the defaults of its config
schema, and the launchpad pre-fills its editor with every default (``rootDefaultYaml``): the
embedded server's home, ``seed_demo``, ``sslmode: disable``, the lake path, 28 lines where a person
should see the one option they may set. The values come from the environment when the code
location loads (``load_settings``), and a launch must not be able to change where a load connects
or writes. So each resource is handed to Dagster as a resource without config whose value is the
object built from the settings: the launchpad shows the load's own option only, and the asset
and sensors get the same object as before.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg


def settled(resources: Mapping[str, object]) -> dict[str, dg.ResourceDefinition]:
    """``resources`` as config-less definitions (the objects are used as they are)."""
    return {
        key: dg.ResourceDefinition.hardcoded_resource(
            value, description=f"{type(value).__name__}, built from the code location's settings"
        )
        for key, value in resources.items()
    }
