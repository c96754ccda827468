"""GET /metrics: the Prometheus text a router scrapes from vLLM, with vLLM's metric names."""

from __future__ import annotations

from aiohttp import web

from .state import STATE, SimState

# (name, type, help): the series a load-aware router reads from vLLM.
_SERIES: tuple[tuple[str, str, str], ...] = (
    ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."),
    ("vllm:prefix_cache_queries_total", "counter",
     "Prefix cache queries (the simulator counts prompts, vLLM counts tokens)."),
    ("vllm:prefix_cache_hits_total", "counter",
     "Prefix cache hits (the simulator counts prompts, vLLM counts tokens)."),
    ("vllm:generation_tokens_total", "counter", "Number of generation tokens processed."),
    ("vllm:request_success_total", "counter", "Count of successfully processed requests."),
)  # fmt: skip


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def kv_cache_usage(state: SimState) -> float:
    """A plausible KV-cache fill: the running sequences' share of the capacity."""
    return min(1.0, state.stats.running / state.settings.capacity)


def values(state: SimState) -> dict[str, float]:
    """Each series' current value."""
    s = state.stats
    return {
        "vllm:num_requests_running": s.running,
        "vllm:num_requests_waiting": s.waiting,
        "vllm:kv_cache_usage_perc": kv_cache_usage(state),
        "vllm:prefix_cache_queries_total": s.prefix_cache_queries,
        "vllm:prefix_cache_hits_total": s.prefix_cache_hits,
        "vllm:generation_tokens_total": s.tokens_generated,
        "vllm:request_success_total": s.completed,
    }


def render(state: SimState) -> str:
    """The exposition text, one sample per series labelled with the model name."""
    label = f'{{model_name="{_label(state.settings.model)}"}}'
    now = values(state)
    lines: list[str] = []
    for name, kind, text in _SERIES:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}",
                  f"{name}{label} {float(now[name])!r}"]  # fmt: skip
    return "\n".join(lines) + "\n"


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in Prometheus text format 0.0.4."""
    body = render(request.app[STATE])
    return web.Response(text=body, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})  # fmt: skip
