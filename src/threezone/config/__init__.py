"""Configuration: the strict schema of ``threezone.toml`` and its loader."""

from threezone.config.load import LoadedConfig, default_config, load_config, parse_config
from threezone.config.schema import Config

__all__ = ["Config", "LoadedConfig", "default_config", "load_config", "parse_config"]
