"""The one exception type the CLI turns into a clean one-line message."""


class TransFusionError(Exception):
    """A problem the user can fix (bad path, wrong layout, incompatible checkpoint...).

    The message must name the offending file or option and say what was expected;
    `Experiment.py` prints it as a single line and exits with status 2, no traceback.
    """
