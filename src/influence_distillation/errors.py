"""Errors the user can act on.

Every message names the file, line or config field at fault and says how to fix it. A field is named as Python
sets it, `SelectionConfig.budget` or `InfluenceConfig.order=2`; the CLI prints it on one line with the flag instead
(`--budget`, `--order 2`: `options.as_flags`) and exits non-zero. Programming errors stay ordinary exceptions (and
keep their traceback).
"""


class InfDistError(Exception):
    """Base class of every error caused by user input or the environment."""


class ConfigError(InfDistError):
    """A flag, config file value or combination of them is invalid."""


class DataError(InfDistError):
    """A pool or target file cannot be read, or one of its records is malformed."""


class ModelError(InfDistError):
    """A model path, architecture, tokenizer or optimizer state cannot be used."""


class OutputError(InfDistError):
    """The output directory cannot be written safely."""
