"""Settings of the worker agent: ``[worker]`` in stager.toml, ``STAGER_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass

from stager.settings import positive_float, positive_int, setting_field


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """``[worker]`` in stager.toml."""

    slots: int = setting_field(1, positive_int, "tasks run at once")
    prefetch: int = setting_field(
        1, int, "tasks leased ahead, their inputs staged while others run"
    )
    heartbeat_s: float = setting_field(5.0, positive_float, "seconds between heartbeats")
    # Short enough that an idle worker drains quickly; new work wakes a poll at once.
    lease_wait_s: float = setting_field(5.0, positive_float, "long-poll wait for work")
    drain_s: float = setting_field(
        60.0, positive_float, "on SIGTERM, let running tasks end this long"
    )
    dispatcher_lost_s: float = setting_field(
        120.0, positive_float, "give up when the dispatcher is unreachable this long"
    )
    spot_metadata_url: str = setting_field(
        "http://169.254.169.254",
        str,
        "instance metadata service watched for spot interruption notices ('off': none)",
    )
