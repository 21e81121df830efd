"""The config root: every config class of dermsearch, each field declared once with its default,
its help text and what values it takes (choices from :mod:`dermsearch.names` as ``Literal`` types,
ranges in the field's metadata; :mod:`.fields`). Each class checks its fields with one generic
check in ``__post_init__`` (plus the few checks that relate fields), the command line builds its
flags from the fields (``cli/options.add_config_flags``), and the presets are instances of these
classes (:mod:`dermsearch.presets`).

Imports only :mod:`dermsearch.names`, :mod:`dermsearch.errors` and the standard library, so
``dermsearch --help`` stays instant; methods that need a model import it when called.
"""

from .evaluate import CI_UNITS, EvaluationConfig
from .extract import LEARNED_GRAM_WEIGHTS, PAPER_STYLE, PREPROCESS_VERSION, ExtractorConfig
from .fields import check_fields, choice, choices_of, default_of, field_of, help_of, setting, value_type
from .index import COMMIT_EVERY, DASK_CHUNK, BuildConfig
from .runtime import Runtime
from .search import FastConfig, SearchConfig
from .train import N_STAGES, NEUTRAL_SETTINGS, AugmentConfig, ClassifierTrainConfig, SegTrainConfig
from .web import WebConfig

__all__ = ["ExtractorConfig", "AugmentConfig", "ClassifierTrainConfig", "SegTrainConfig", "FastConfig", "SearchConfig",
           "EvaluationConfig", "WebConfig", "Runtime", "BuildConfig", "CONFIG_CLASSES",
           "PAPER_STYLE", "PREPROCESS_VERSION", "LEARNED_GRAM_WEIGHTS", "N_STAGES", "NEUTRAL_SETTINGS", "CI_UNITS",
           "COMMIT_EVERY", "DASK_CHUNK",
           "setting", "choice", "check_fields", "field_of", "default_of", "help_of", "choices_of", "value_type"]

CONFIG_CLASSES = (ExtractorConfig, AugmentConfig, ClassifierTrainConfig, SegTrainConfig, FastConfig, SearchConfig,
                  EvaluationConfig, WebConfig, Runtime, BuildConfig)
