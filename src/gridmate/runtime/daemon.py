"""Running a component as a long-lived service.

:func:`serve` wires the shared pieces around a component's ``run`` coroutine:
logging, the metrics endpoint, signal handling, systemd readiness, status and
watchdog, and a bounded graceful stop. The component receives a :class:`Daemon`
and is expected to

* call :meth:`Daemon.ready` once it is really serving,
* register health checks that the watchdog and ``/metrics`` consult,
* return when :attr:`Daemon.stop` is set, after finishing or handing back
  in-flight work (it is cancelled if it overruns ``shutdown_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from gridmate import __version__
from gridmate.runtime.clock import Clock, SystemClock
from gridmate.runtime.logs import get_logger
from gridmate.runtime.metrics import (
    MetricsServer,
    is_loopback,
    new_registry,
    start_metrics_server,
)
from gridmate.runtime.settings import ComponentSettings
from gridmate.runtime.systemd import ServiceNotifier, watchdog_interval, watchdog_loop

HealthCheck = Callable[[], str | None]
"""Returns None when healthy, or a short reason a person can read."""


class Daemon:
    def __init__(
        self,
        name: str,
        settings: ComponentSettings,
        *,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        notifier: ServiceNotifier | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.registry = registry or new_registry()
        self.notifier = notifier or ServiceNotifier()
        self.stop = asyncio.Event()
        self.is_ready = False
        self.failure: BaseException | None = None
        """The error that stopped the component, if one did."""
        self.metrics_port: int | None = None
        self.log = get_logger(name)
        self._health_checks: dict[str, HealthCheck] = {}
        self._healthy_gauge = Gauge(
            "gridmate_healthy",
            "1 when every health check of the component passes.",
            registry=self.registry,
        )
        self._healthy_gauge.set_function(lambda: 0.0 if self.health_problems() else 1.0)
        Gauge(
            "gridmate_build_info",
            "gridmate version.",
            ["version", "component"],
            registry=self.registry,
        ).labels(__version__, name).set(1)

    def ready(self, status: str) -> None:
        """Tell systemd (and the log) that the component is serving."""
        self.is_ready = True
        self.notifier.ready(status)
        self.log.info("ready", status=status)

    def status(self, text: str) -> None:
        self.notifier.status(text)

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        self._health_checks[name] = check

    def health_problems(self) -> list[str]:
        problems = []
        for name, check in self._health_checks.items():
            try:
                reason = check()
            except Exception as error:  # a broken check is itself a problem to report
                reason = f"check raised {type(error).__name__}: {error}"
            if reason:
                problems.append(f"{name}: {reason}")
        return problems

    def request_stop(self, why: str = "stop requested") -> None:
        if not self.stop.is_set():
            self.log.info("stopping", reason=why)
            self.notifier.stopping(f"Stopping ({why})")
            self.stop.set()


RunFunction = Callable[[Any, Daemon], Coroutine[Any, Any, None]]


async def serve(
    name: str,
    settings: ComponentSettings,
    run: RunFunction,
    *,
    shutdown_timeout: float = 15.0,
    daemon: Daemon | None = None,
) -> int:
    """Run a component until it ends or a signal stops it; returns the exit code."""
    daemon = daemon or Daemon(name, settings)
    log = daemon.log
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.request_stop, signal.Signals(signum).name)

    metrics: MetricsServer | None = None
    if settings.metrics.enable:
        try:
            metrics = start_metrics_server(
                daemon.registry, settings.metrics.listen_address, settings.metrics.port
            )
        except OSError as error:
            log.error(
                "cannot open the metrics endpoint",
                address=f"{settings.metrics.listen_address}:{settings.metrics.port}",
                error=str(error),
                hint="choose another metrics.port or set metrics.enable = false",
            )
            return 1
        daemon.metrics_port = metrics.port
        log.info(
            "metrics endpoint listening",
            url=f"http://{settings.metrics.listen_address}:{metrics.port}/metrics",
        )
        if not is_loopback(settings.metrics.listen_address):
            log.warning(
                "the metrics endpoint is unauthenticated and reachable from the network",
                address=settings.metrics.listen_address,
                port=metrics.port,
                hint='set metrics.listen_address = "127.0.0.1" and scrape through a proxy, '
                "or allow only the Prometheus host in the firewall",
            )

    tasks: list[asyncio.Task[Any]] = []
    interval = watchdog_interval()
    if interval is not None:
        tasks.append(
            asyncio.create_task(
                watchdog_loop(daemon.notifier, interval, daemon.health_problems), name="watchdog"
            )
        )
    daemon.status("Starting")
    log.info("starting", version=__version__)
    component: asyncio.Task[None] = asyncio.create_task(run(settings, daemon), name=f"{name}.run")
    stop_wait = asyncio.create_task(daemon.stop.wait(), name="stop-wait")
    exit_code = 0
    try:
        await asyncio.wait({component, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not component.done():
            try:
                await asyncio.wait_for(asyncio.shield(component), timeout=shutdown_timeout)
            except TimeoutError:
                log.warning(
                    "graceful stop took too long; cancelling", timeout=f"{shutdown_timeout:g}s"
                )
                component.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await component
        if not component.cancelled() and component.exception() is not None:
            failure = daemon.failure = component.exception()
            log.error(
                "stopped by an error",
                error=f"{type(failure).__name__}: {failure}",
                exc_info=failure,
            )
            exit_code = 1
        elif not daemon.stop.is_set():
            log.info("finished")
    finally:
        daemon.notifier.stopping()
        for task in (*tasks, stop_wait):
            task.cancel()
        for task in (*tasks, stop_wait):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if metrics is not None:
            metrics.close()
    log.info("stopped", exit_code=exit_code)
    return exit_code
