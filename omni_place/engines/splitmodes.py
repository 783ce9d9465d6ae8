"""Split modes (``-sm``) as engine facts: which modes an engine has, how each tool spells them,
and the conditions under which the engine accepts one. Each dialect holds one table of
:class:`SplitModeRule` (``SPLIT_MODES`` in its module, reached through
:attr:`EngineTraits.split_modes <omni_place.engines.base.EngineTraits>`); :func:`refusal` reads
it against a model, the model devices and the run settings.

A *parallel* mode splits every weight and the KV cache of the GPU-held layers across all model
devices by the ``-ts`` shares (mainline ``tensor``, ik's ``graph``); omni-place prices those
(:mod:`omni_place.splitcost`). The others keep the layer split (``none``, ``layer``) or are not
priced (ik's ``attn``, mainline ``row`` which no modelled backend can load).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import InvalidArgumentError
from ..hparams import arch_spec
from ..model import ModelProfile


@dataclass(frozen=True)
class SplitModeRule:
    """One ``-sm`` value of one engine and when the engine accepts it."""

    name: str  # the -sm value; llama-server and llama-bench spell it alike
    source: str  # where the engine implements it (file:line)
    parallel: bool = False  # weights and KV of GPU layers split across every model device by -ts
    bench: bool = True  # the engine's llama-bench takes it
    min_devices: int = 1  # model devices the engine needs (it throws below)
    flash_attn: str = ""  # where the engine refuses the context without flash attention ("": it does not)
    # device kinds (Device.kind) the mode may split over: the backends with what the mode needs
    device_kinds: frozenset[str] = frozenset({"gpu", "rpc"})
    device_refusal: str = ""  # what the engine says about another kind
    archs: frozenset[str] = frozenset()  # the engine's architecture list (general.architecture names)
    archs_allowed: bool = False  # archs is an allow-list (True) or a deny-list (False)
    archs_source: str = ""
    arch_fallback: str | None = None  # the mode the engine falls back to for an unlisted arch (None: it throws)
    mla_kv_mirrored: bool = False  # an MLA model's latent KV cache is whole on every device
    priced: bool = True  # omni-place prices it (False: refused as not modelled)

    def arch_supported(self, arch: str) -> bool:
        return (arch in self.archs) == self.archs_allowed


def find_rule(table: Sequence[SplitModeRule], mode: str) -> SplitModeRule | None:
    """The table entry of ``-sm mode`` (None: the engine has no such mode)."""
    return next((r for r in table if r.name == mode), None)


def is_parallel(table: Sequence[SplitModeRule], mode: str) -> bool:
    """Whether ``-sm mode`` is one of the table's parallel modes (False for a mode it lacks)."""
    rule = find_rule(table, mode)
    return rule is not None and rule.parallel


def rule_of(table: Sequence[SplitModeRule], engine: str, mode: str, tool: str = "server") -> SplitModeRule:
    """The table entry of ``-sm mode``; the engine's own refusal for a value it does not know."""
    rule = find_rule(table, mode)
    if rule is None or (tool == "bench" and not rule.bench):
        names = [r.name for r in table if tool != "bench" or r.bench]
        raise InvalidArgumentError(f"-sm {mode}: {engine}'s {'llama-bench' if tool == 'bench' else 'server'} has no "
                                   "such split mode (the engine refuses it as an invalid value)",
                                   hint="one of: " + ", ".join(names))
    return rule


def refusal(rule: SplitModeRule, engine: str, model: ModelProfile, device_kinds: Sequence[str],
            flash_attn: bool) -> str | None:
    """Why ``engine`` refuses (or omni-place cannot price) ``-sm rule.name`` for this model on
    model devices of these kinds with this flash-attention setting; None when it runs and is
    priced. For a mode whose engine falls back to another for the architecture, the reason
    names the fallback (the caller prices the fallback or refuses)."""
    sm = f"-sm {rule.name}"
    if not rule.priced:
        return f"{sm} is not modelled by omni-place ({rule.source})"
    other = sorted({k for k in device_kinds if k not in rule.device_kinds})
    if other:
        kinds = {"gpu": "local GPU", "rpc": "RPC"}
        return f"{engine} cannot use {sm} on {'/'.join(kinds.get(k, k) for k in other)} devices: {rule.device_refusal}"
    if not rule.parallel:
        return None
    if not rule.arch_supported(model.architecture):
        what = "falls back to -sm " + rule.arch_fallback if rule.arch_fallback else "refuses to load"
        return f"{engine} {what} for architecture {model.architecture!r} under {sm} ({rule.archs_source})"
    if len(device_kinds) < rule.min_devices:
        return f"{engine} needs at least {rule.min_devices} devices for {sm} ({rule.source}); the run has " \
               f"{len(device_kinds)}"
    if rule.flash_attn and not flash_attn:
        return f"{engine} refuses {sm} without flash attention ({rule.flash_attn})"
    hp = model.hparams
    if arch_spec(model.architecture).recurrent or hp.ssm_d_inner or any(h == 0 for h in hp.n_head_kv[:hp.n_layer_kv]):
        return (f"omni-place does not price {sm} for layers without KV heads (recurrent, hybrid or attention-free; "
                f"architecture {model.architecture!r})")
    if hp.is_mla and not rule.mla_kv_mirrored:
        return f"omni-place does not price {engine}'s {sm} split of an MLA cache (architecture {model.architecture!r})"
    return None


def check(rule: SplitModeRule, engine: str, model: ModelProfile, device_kinds: Sequence[str],
          flash_attn: bool) -> None:
    """Raise the :func:`refusal` of a user's ``-sm`` as a one-line error."""
    why = refusal(rule, engine, model, device_kinds, flash_attn)
    if why is not None:
        raise InvalidArgumentError(why, hint="use -sm layer (the default), or another engine, model or settings")


__all__ = ["SplitModeRule", "check", "find_rule", "is_parallel", "refusal", "rule_of"]
