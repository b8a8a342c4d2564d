"""Typed schemas of the config groups and validation of a composed config."""
