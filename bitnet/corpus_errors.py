"""The one error of corpus loading, in a leaf module: bitnet.data and bitnet.portable (which
data uses) both raise it, so neither has to import the other for it."""


class CorpusError(ValueError):
    """A corpus cannot be loaded; the message names the problem and the fix in one line."""
