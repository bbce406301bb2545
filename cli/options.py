"""Click parameter types for app options, checked by :mod:`contracts.options` so a bad flag
gets the sentence the manifest and the API give for the same mistake, before any request."""

from __future__ import annotations

from collections.abc import Callable

import click

from contracts import options


class Checked(click.ParamType):
    """A flag's value checked (and converted) by one function of :mod:`contracts.options`."""

    def __init__(self, check: Callable[[object], object], name: str,
                 number: type | None = None) -> None:
        self.check, self.name, self.number = check, name, number

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> object:
        if self.number is not None and isinstance(value, str):  # "3" is 3; "three" stays
            try:
                value = int(value) if self.number is int else float(value)
            except ValueError:
                pass
        try:
            return self.check(value)
        except options.InvalidOption as e:
            self.fail(e.message, param, ctx)


INSTANCES = Checked(options.instances, "integer", int)
MEMORY = Checked(options.memory, "size")
DISK = Checked(options.disk, "size")
HEALTH_CHECK_TYPE = Checked(options.health_check_type, "port|http|process")
ENDPOINT = Checked(options.health_check_endpoint, "path")
START_TIMEOUT = Checked(options.start_timeout, "integer", int)
INTERVAL = Checked(options.health_check_interval, "seconds", float)
PROBE_TIMEOUT = Checked(options.health_check_probe_timeout, "seconds", float)
ENV_NAME = Checked(options.env_name, "name")
