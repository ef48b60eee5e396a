"""The one error type of the data layer: a leaf module, so every reader, decoder and check can raise it without
importing the dataset reader (and the reader can import them)."""


class DatasetFormatError(ValueError):
    """A dataset on disk is missing, corrupt or not in a supported LeRobot layout (message names the file)."""
