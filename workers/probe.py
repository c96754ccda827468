"""Active health checks: every few seconds, each replica's model list (is it there, does it take
our key, does it serve our model) and its load from vLLM's own /metrics."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .errors import UpstreamError, UpstreamRejected
from .replica import Replica
from .router import ModelRoute, Router
from .upstream import Unreachable

log = logging.getLogger(__name__)
# vLLM's gauges we route by; the KV-cache one was renamed in vLLM 0.10 (gpu_ -> kv_).
_GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
           "vllm:kv_cache_usage_perc": "kv", "vllm:gpu_cache_usage_perc": "kv"}


@dataclass(frozen=True)
class ProbeSettings:
    """How often and how patiently replicas are probed (the `routing` section's part)."""

    probe_interval_s: float = 2.0
    probe_timeout_s: float = 5.0
    scrape_metrics: bool = True


def parse_load(text: str) -> dict[str, float] | None:
    """vLLM's running/waiting/KV-cache gauges from Prometheus text, summed over its engines;
    None if the page has none of them (not a vLLM server)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace = line.find("{")
        name = line[:brace] if brace >= 0 else line.split(" ", 1)[0]
        kind = _GAUGES.get(name)
        if kind is None:
            continue
        rest = line[line.rfind("}") + 1:] if brace >= 0 else line[len(name):]
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        if kind == "kv":  # a share: the busiest engine's, not a sum
            found[kind] = max(found.get(kind, 0.0), value)
        else:
            found[kind] = found.get(kind, 0.0) + value
    return found or None


class Prober:
    """Probes every replica of every model in a loop; a replica that answers again is back."""

    def __init__(self, router: Router, settings: ProbeSettings) -> None:
        self._router = router
        self._s = settings
        self._scrape: dict[Replica, bool] = {}  # False once a replica showed it has no /metrics

    async def run(self) -> None:
        """Probe every replica forever, each on its own beat, so one that hangs for the
        probe timeout delays no other's check (cancel to stop)."""
        pairs = [(route, r) for route in self._router.routes for r in route.replicas]
        await asyncio.gather(*(self._beat(route, r) for route, r in pairs))

    async def _beat(self, route: ModelRoute, replica: Replica) -> None:
        while True:
            await asyncio.sleep(self._s.probe_interval_s)
            await self._probe(route, replica)
            self._router.changed()  # back or out, or new load figures: waiting work looks again

    async def round(self) -> None:
        """Probe every replica once, all at the same time."""
        pairs = [(route, r) for route in self._router.routes for r in route.replicas]
        await asyncio.gather(*(self._probe(route, r) for route, r in pairs))
        self._router.changed()  # back or out, or new load figures: waiting work looks again

    async def _probe(self, route: ModelRoute, replica: Replica) -> bool:
        timeout = self._s.probe_timeout_s
        try:
            served = await replica.client.list_models(timeout)
        except UpstreamRejected as err:
            return self._note(replica, replica.probed(
                f"it refused our key or request ({err.status}): check its api_key", "auth"))
        except Unreachable as err:
            return self._note(replica, replica.probed(f"probe failed: {err}", "connect"))
        except UpstreamError as err:
            return self._note(replica, replica.probed(f"probe failed: {err}", "probe"))
        route.learn(served)
        if route.served_name and route.served_name not in served:
            return self._note(replica, replica.probed(
                f"it does not serve `{route.served_name}` (it serves: {', '.join(served)[:200]})",
                "model"))
        changed = replica.probed(None)
        if self._s.scrape_metrics and self._scrape.get(replica, True):
            await self._read_load(replica, timeout)
        return self._note(replica, changed)

    async def _read_load(self, replica: Replica, timeout: float) -> None:
        try:
            text = await replica.client.load(timeout)
        except UpstreamError:
            return  # the model list answered: a missed scrape only leaves the load older
        gauges = parse_load(text) if text is not None else None
        if gauges is None:
            self._scrape[replica] = False  # not vLLM: route by our own in-flight count only
            log.info("replica %s has no vLLM /metrics: routing by in-flight requests only",
                     replica.label)
            return
        replica.observe(gauges.get("running", 0.0), gauges.get("waiting", 0.0),
                        gauges.get("kv", 0.0))

    @staticmethod
    def _note(replica: Replica, changed: bool) -> bool:
        if changed:
            if replica.state == "healthy":
                log.warning("replica %s is back", replica.label)
            else:
                log.warning("replica %s is %s: %s", replica.label, replica.state, replica.reason)
        return changed
