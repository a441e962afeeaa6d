"""Typed preset configuration: the schema (`schema`), the typed-YAML builder (`typed`), loading and
validation (`loader`)."""
from lco_cli.config.loader import (apply_overrides, bundled_presets, config_hash, dump_yaml, from_dict, load, parse_override,
                                   read_preset_file, to_dict)
from lco_cli.config.schema import (BENCHMARK_NAMES, DEFAULT_PRESET, STAGES, DataConfig, EvalConfig, LoraConfig,
                                   ModelConfig, PairsConfig, Preset, RMConfig, RolloutConfig, SFTConfig, TaskConfig,
                                   TelemetryConfig, TrainConfig)
from lco_cli.config.typed import build, field_docs

__all__ = ["BENCHMARK_NAMES", "DEFAULT_PRESET", "STAGES", "DataConfig", "EvalConfig", "LoraConfig", "ModelConfig",
           "PairsConfig", "Preset", "RMConfig", "RolloutConfig", "SFTConfig", "TaskConfig", "TelemetryConfig", "TrainConfig",
           "apply_overrides", "build", "bundled_presets", "config_hash", "dump_yaml", "field_docs", "from_dict", "load",
           "parse_override", "read_preset_file", "to_dict"]
