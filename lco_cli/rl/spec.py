"""What a `train.algo` needs and checks, free of torch: the `AlgoSpec` base.

The registry (`rl.registry`) holds one spec class per algorithm name. `lco validate`, the run planner
and the docs read only specs, so they never import torch; the train stage asks the registry for the
algorithm's `Update` (which subclasses its spec) and imports it then. `Update` itself derives from
`AlgoSpec`, so an algorithm written outside lco is one `Update` subclass registered directly.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

from lco_cli.config.typed import build
from lco_cli.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from lco_cli.config import TrainConfig


class AlgoSpec:
    """A `train.algo`'s declaration: its `algo_args` dataclass, what it needs, its defaults, its checks."""

    name: ClassVar[str] = ""  # set by register_algo
    #: the frozen dataclass that validates `train.algo_args` (None: the Update's `loss_cls.Config`, or no algo_args)
    algo_args: ClassVar[type | None] = None
    #: takes `train.advantage` / `advantage_model` (dense token advantages over the vocabulary)
    dense_advantages: ClassVar[bool] = False
    #: group methods need several samples of each prompt
    min_samples_per_prompt: ClassVar[int] = 1
    #: what a null `train.samples_per_prompt` / `update_epochs` / `minibatches` means for this algorithm
    default_samples_per_prompt: ClassVar[int] = 1
    default_update_epochs: ClassVar[int] = 1
    default_minibatches: ClassVar[int] = 1
    #: `train` keys the loss reads only under some settings: key -> (setting, the values under which it is read).
    #: A key set away from its default while its setting has another value changes nothing: `lco validate`
    #: and `lco train` warn. The LCO loss's keys are read by algo=lco only; an algorithm that reads them too
    #: overrides this.
    reads_when: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {
        key: ("algo", ("lco",)) for key in ("objective", "advantage", "advantage_model", "advantage_norm",
                                            "advantage_center", "advantage_clip", "advantage_support", "advantage_topk",
                                            "beta", "beta_neg")}

    @classmethod
    def algo_args_class(cls) -> type | None:
        if cls.algo_args is not None:
            return cls.algo_args
        loss_cls = getattr(cls, "loss_cls", None)  # an Update registered directly names its loss class
        return None if loss_cls is None else loss_cls.Config

    @classmethod
    def needs_reward_model(cls, cfg: "TrainConfig") -> bool:
        """Whether the rm stage's φ_DPO must be loaded (the RM reward, a teacher, dense advantages)."""
        return cfg.reward == "rm"

    @classmethod
    def loss_needs_reference(cls, cfg: "TrainConfig") -> bool:
        """Whether a loss term reads log π_ref (a KL penalty): then the reference runs whatever the telemetry."""
        return False

    @classmethod
    def needs_reference(cls, cfg: "TrainConfig") -> bool:
        """Whether the train stage loads the reference policy: a loss term or the `kl_ref` telemetry needs it."""
        return cfg.telemetry.kl_ref or cls.loss_needs_reference(cfg)

    @classmethod
    def unread_keys(cls, cfg: "TrainConfig") -> list[str]:
        """One message per `train` key set away from its default that the loss does not read under `cfg`."""
        defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
        out = []
        for key, (setting, values) in cls.reads_when.items():
            value, current = getattr(cfg, key), getattr(cfg, setting)
            if value == defaults[key] or current in values:
                continue
            where = f"algo={cls.name}" + ("" if setting == "algo" else f" with {setting}={current}")
            out.append(f"train.{key} is set to {value!r} but {where} does not read it; "
                       f"set train.{setting}={'|'.join(values)} to train on it")
        return out

    @classmethod
    def resolve(cls, cfg: "TrainConfig") -> "TrainConfig":
        """`cfg` with every null per-algorithm key replaced by this class's `default_<key>` (the one place)."""
        keys = ("samples_per_prompt", "update_epochs", "minibatches")
        return dataclasses.replace(cfg, **{k: getattr(cls, f"default_{k}") for k in keys if getattr(cfg, k) is None})

    @classmethod
    def check(cls, cfg: "TrainConfig") -> list[str]:
        """Every problem of `train` for this algorithm, as 'key: message' strings."""
        cfg = cls.resolve(cfg)
        errors = []
        if cfg.samples_per_prompt < cls.min_samples_per_prompt:
            errors.append(f"train.samples_per_prompt: {cls.name} needs >= {cls.min_samples_per_prompt} samples per prompt "
                          "for group advantages")
        args_cls = cls.algo_args_class()
        if args_cls is None:
            if cfg.algo_args:
                errors.append(f"train.algo_args: {cls.name} takes no algo_args")
            return errors
        build(args_cls, dict(cfg.algo_args or {}), "train.algo_args", errors)
        owned = cls.owned_args(cfg)
        errors += [f"train.algo_args.{k}: {cfg.algo_args[k]!r} conflicts with {src}={v} (leave it out: it follows {src})"
                   for k, (v, src) in owned.items() if k in (cfg.algo_args or {}) and cfg.algo_args[k] != v]
        return errors

    @classmethod
    def owned_args(cls, cfg: "TrainConfig") -> dict[str, tuple[object, str]]:
        """Loss-config keys the loop sets from other preset keys: name -> (value, source key)."""
        args_cls = cls.algo_args_class()
        names = {f.name for f in dataclasses.fields(args_cls)} if args_cls else set()
        return {"group_size": (cfg.samples_per_prompt, "train.samples_per_prompt")} if "group_size" in names else {}

    @classmethod
    def default_args(cls, cfg: "TrainConfig") -> dict[str, object]:
        """Loss-config defaults derived from the preset when `algo_args` leaves them out."""
        return {}

    @classmethod
    def loss_config(cls, cfg: "TrainConfig"):
        """The `algo_args` dataclass from `train.algo_args` plus the loop-owned and derived keys; ConfigError
        (exit 2) on a bad or contradicting value."""
        cfg = cls.resolve(cfg)
        errors = cls.check(cfg)
        if errors:
            raise ConfigError("invalid train.algo_args", errors)
        args = dict(cfg.algo_args or {})
        base = build(cls.algo_args_class(), args, "train.algo_args", [])
        values = {k: v for k, (v, _) in cls.owned_args(cfg).items()}
        values.update({k: v for k, v in cls.default_args(cfg).items() if args.get(k) is None})
        return dataclasses.replace(base, **values)
