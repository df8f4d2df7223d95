"""The ``gridmate`` command line."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gridmate import __version__
from gridmate.components import all_components
from gridmate.runtime.component import Command, Component
from gridmate.runtime.daemon import Daemon, serve
from gridmate.runtime.logs import configure_logging, get_logger
from gridmate.runtime.settings import ComponentSettings, ConfigError, load_settings

EXIT_CONFIG_ERROR = 2

log = get_logger("cli")

DESCRIPTION = """\
gridmate is a self-hosted Tesla home-energy and telemetry hub.

Each component runs as its own service ('gridmate <component> run') and reads
a TOML file given with --config, with GRIDMATE_<COMPONENT>_<KEY> environment
variables on top (nested keys joined by '__'). Secrets are never written in
the file: they are read from files named by '<key>_file' options or passed by
systemd with LoadCredential=.

Start with 'gridmate demo', which needs no services and shows every component
at work against built-in simulators.
"""

EPILOG = """\
exit codes: 0 success, 1 runtime failure, 2 configuration error.
documentation: docs/configuration.md and docs/nixos.md in the source tree.
"""


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="PATH",
        help="TOML configuration file (default: environment variables and built-in defaults)",
    )
    parser.add_argument("--debug", action="store_true", help="log at debug level")


def _add_component(subparsers: Any, component: Component) -> None:
    parser = subparsers.add_parser(
        component.name,
        help=component.summary,
        description=component.description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    if component.run is not None:
        run = actions.add_parser(
            "run",
            help=f"run the {component.name} service in the foreground",
            description=f"Run the {component.name} service until SIGTERM or SIGINT. Under "
            "systemd it reports readiness and status and pings the watchdog.",
        )
        _config_argument(run)
        run.set_defaults(handler=_run_service, component=component)
    check = actions.add_parser(
        "check-config",
        help="validate the configuration and print the effective settings",
        description="Load the configuration exactly as 'run' would, including secret files, "
        "and print the effective settings as JSON with secrets masked. Exits 2 on any error.",
    )
    _config_argument(check)
    check.set_defaults(handler=_check_config, component=component)
    for command in component.commands:
        sub = actions.add_parser(
            command.name, help=command.help, description=command.description or command.help
        )
        _config_argument(sub)
        command.add_arguments(sub)
        sub.set_defaults(handler=_run_command, component=component, command=command)


def _add_shortcut(subparsers: Any, component: Component, command: Command) -> None:
    sub = subparsers.add_parser(
        command.name,
        help=f"{command.help} (same as '{component.name} {command.name}')",
        description=command.description or command.help,
    )
    _config_argument(sub)
    command.add_arguments(sub)
    sub.set_defaults(handler=_run_command, component=component, command=command)


def build_parser(components: Sequence[Component] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridmate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gridmate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    version = subparsers.add_parser("version", help="print the version")
    version.set_defaults(handler=lambda args: print(f"gridmate {__version__}") or 0)
    demo = subparsers.add_parser(
        "demo",
        help="run every component against built-in simulators (no services needed)",
        description="Start gridmate's simulators and message brokers of its own, drive the "
        "real components against them over their real protocols in accelerated time, and "
        "print a timeline and a summary.",
    )
    demo.add_argument(
        "--speed",
        type=float,
        default=None,
        help="simulated seconds per real second (default: per scenario)",
    )
    demo.add_argument(
        "--only", metavar="NAME", action="append", help="run only this scenario (repeatable)"
    )
    demo.add_argument("--debug", action="store_true", help="also show the components' logs")
    demo.set_defaults(handler=_run_demo)
    chosen = list(components) if components is not None else all_components()
    for component in chosen:
        _add_component(subparsers, component)
    for component in chosen:
        for command in component.commands:
            if command.shortcut:
                _add_shortcut(subparsers, component, command)
    return parser


def _load(component: Component, args: argparse.Namespace) -> ComponentSettings | None:
    try:
        return load_settings(component.settings_model, args.config)
    except ConfigError as error:
        for line in error.lines():
            print(f"gridmate {component.name}: configuration error: {line}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    settings = _load(args.component, args)
    if settings is None:
        return EXIT_CONFIG_ERROR
    print(json.dumps(settings.effective(), indent=2, default=str))
    print(f"gridmate {args.component.name}: configuration OK", file=sys.stderr)
    return 0


def _run_service(args: argparse.Namespace) -> int:
    component: Component = args.component
    settings = _load(component, args)
    if settings is None:
        return EXIT_CONFIG_ERROR
    configure_logging("debug" if args.debug else settings.log.level, settings.log.format)
    assert component.run is not None
    return asyncio.run(_serve_and_report(component, settings))


async def _serve_and_report(component: Component, settings: ComponentSettings) -> int:
    assert component.run is not None
    daemon = Daemon(component.name, settings)
    exit_code = await serve(component.name, settings, component.run, daemon=daemon)
    notify = getattr(settings, "notify", None)
    if daemon.failure is not None and notify is not None:
        from gridmate.notify.failures import notify_failure

        try:
            await notify_failure(
                component.name,
                notify,
                settings.state_directory,
                daemon.failure,
                was_ready=daemon.is_ready,
            )
        except Exception as error:  # the failure itself is already logged
            log.error("could not send the failure notice", error=f"{type(error).__name__}: {error}")
    return exit_code


def _run_command(args: argparse.Namespace) -> int:
    component: Component = args.component
    command: Command = args.command
    settings = _load(component, args)
    if settings is None:
        return EXIT_CONFIG_ERROR
    configure_logging("debug" if args.debug else settings.log.level, settings.log.format)
    result = command.execute(settings, args)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return int(result)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _run_demo(args: argparse.Namespace) -> int:
    from gridmate.demo import run_demo

    configure_logging("debug" if args.debug else "error", "text")
    return asyncio.run(run_demo(speed=args.speed, only=args.only))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
