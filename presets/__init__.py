"""Bundled presets (installed as the package `lco_cli.presets`)."""
