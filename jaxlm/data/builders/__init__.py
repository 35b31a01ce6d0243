"""jaxlm's own tfds builders, by the name `jaxlm.data.sources.open_source` knows them.

Each builder class has `make_config(...)` turning the caller's options (a `path`, fields, ...) into a
config named after its input, so that a prepared dataset is reused only for the same files and options.
A builder with named configs takes them as `NAME/CONFIG` (tfds' syntax), passed to make_config as `variant`.
"""

from jaxlm.data.builders.embedded import EmbeddedCorpus, FortunesTopic, WordnetLexname
from jaxlm.data.builders.human_ratings import SentimentRatings
from jaxlm.data.builders.local_classification import LocalClassification
from jaxlm.data.builders.local_preferences import LocalPreferences
from jaxlm.data.builders.local_text import LocalText

BUILDERS = {
    "local_text": LocalText,
    "local_classification": LocalClassification,
    "embedded_corpus": EmbeddedCorpus,
    "wordnet_lexname": WordnetLexname,
    "fortunes_topic": FortunesTopic,
    "sentiment_ratings": SentimentRatings,  # by config: sentiment_ratings/movies_binary, ...
    "local_preferences": LocalPreferences,
}
