"""``paas run APP -- CMD ARGS...``: a one-off command in a new container of the app."""

from __future__ import annotations

import shlex

import click

from cli.client import ApiError, Client
from cli.config import Config


def shell_command(words: tuple[str, ...]) -> str:
    """One word is a shell command line as typed (``"ls /app | wc -l"``); several are quoted
    so each reaches the command as the one argument it was (``-- python -c 'print(1)'``)."""
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return shlex.join(words)


@click.command(context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.argument("app")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(app: str, command: tuple[str, ...]) -> None:
    """Run COMMAND once in a new container of APP's current release, with its env.

    The output shows as it comes; paas exits with the command's exit code.
    Example: paas run myapp -- python manage.py migrate
    """
    if command[:1] == ("--",):  # click keeps it once the app's name has ended the options
        command = command[1:]
    line = shell_command(command)
    if not line.strip():
        raise click.UsageError("give the command to run after the app's name.")
    api = Client(Config.load())
    task = api.post(f"/apps/{app}/tasks", json={"command": line})
    click.echo(f"Running `{task['command']}` on {app} (release {task.get('release', '?')}, "
               f"agent {task['agent']}, task {task['guid']})", err=True)
    try:
        for event in api.lines(f"/tasks/{task['guid']}/log"):
            if "line" in event:
                click.echo(event["line"])
            elif "exit_code" in event:
                raise SystemExit(int(event["exit_code"]))
            elif "error" in event:
                raise ApiError(f"the task did not finish: {event['error']}")
    except KeyboardInterrupt:
        click.echo(f"\nStopped following; the task keeps running on {task['agent']}.",
                   err=True)
        raise SystemExit(130) from None
    raise ApiError("the task's output ended before its exit code came; its outcome is "
                   "unknown.")
