"""Configuration: typed dataclasses loaded from YAML recipes with ``key=value`` overrides.

:mod:`~jaxalign.config.loader` reads and validates recipes for any dataclass;
:mod:`~jaxalign.config.run` holds a training run's sections (``TrainConfig``) and
:mod:`~jaxalign.config.objectives` each objective's options. They sit below everything else
(models, data, objectives, tasks, the trainer all read them), so configuration imports no
module that trains or loads anything.
"""

from jaxalign.config.loader import (
    ConfigError,
    describe_options,
    field_docs,
    from_dict,
    load_recipe,
    merge,
    parse_overrides,
    to_dict,
)

__all__ = ["ConfigError", "describe_options", "field_docs", "from_dict", "load_recipe", "merge", "parse_overrides",
           "to_dict"]
