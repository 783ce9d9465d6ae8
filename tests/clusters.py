"""Cluster TOML text for tests."""
from __future__ import annotations


def cluster_toml(name: str, *devices: tuple[str, str, int, int]) -> str:
    """A cluster file named ``name`` with (name, kind, memory_gib, bandwidth_gbs) devices."""
    return f'name = "{name}"\n' + "".join(
        f'[[devices]]\nname = "{dev}"\nkind = "{kind}"\nmemory_gib = {mem}\nbandwidth_gbs = {bw}\n'
        for dev, kind, mem, bw in devices)
