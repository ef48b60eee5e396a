"""The names a command's `--help` lists, read from their registries when help is printed.

Help strings write `{presets}`, `{sizes}` or `{simulators}`; `RegistryHelpFormatter` fills them in. Reading the
registries only then keeps `latentvla --help` instant (the preset table imports torch) and keeps the lists in
one place: a new preset, size or simulator shows up in `--help` with no edit here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def preset_names() -> tuple[str, ...]:
    """Every registered training preset (`latentvla.config.PRESETS`)."""
    from latentvla.config import PRESETS

    return tuple(PRESETS)


def size_names() -> tuple[str, ...]:
    """Every backbone size of the size dial."""
    from latentvla.models.backbones import BACKBONE_SIZES as SIZES

    return tuple(SIZES)


def simulator_names() -> tuple[str, ...]:
    """Every registered simulator (`latentvla.envs.registry.SIMULATORS`)."""
    from latentvla.envs.registry import SIMULATORS

    return tuple(SIMULATORS)


REGISTRIES: dict[str, Callable[[], tuple[str, ...]]] = {
    "presets": preset_names,
    "sizes": size_names,
    "simulators": simulator_names,
}


class RegistryHelpFormatter(argparse.HelpFormatter):
    """An argparse formatter that replaces `{presets}`, `{sizes}`, `{simulators}` with the registered names."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        for key, names in REGISTRIES.items():
            if text and "{" + key + "}" in text:
                text = text.replace("{" + key + "}", " | ".join(names()))
        return text
