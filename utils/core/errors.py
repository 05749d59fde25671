"""The one exception type the CLI turns into a clean one-line message."""


class TransFusionError(Exception):
    """A problem the user can fix (bad path, wrong layout, incompatible checkpoint...).

    The message must name the offending file or option and say what was expected;
    `Experiment.py` prints it as a single line and exits with status 2, no traceback.
    """

    def __init__(self, *args: object) -> None:
        # A DataLoader worker that raised this error is re-raised in the main process as
        # TransFusionError("Caught TransFusionError in DataLoader worker process N.\n
        # Original Traceback ...\nutils.errors.TransFusionError: <message>"): keep <message>.
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") \
                and "in DataLoader worker" in args[0].split("\n", 1)[0]:
            text = args[0].rstrip()
            marker = "TransFusionError: "
            at = text.rfind("\n" + f"{type(self).__module__}.{type(self).__qualname__}: ")
            at = at + 1 if at >= 0 else text.rfind(marker)
            if at >= 0:
                args = (text[text.index(marker, at) + len(marker):],)
        super().__init__(*args)


class Interrupted(Exception):
    """Ctrl-C stopped a run after it saved what it had (a checkpoint to --resume from).

    Not a `TransFusionError`: nothing was wrong with the input. `Experiment.py` prints the
    message once, as one line, and exits with status 130 (128 + SIGINT), so that
    ``train && test`` does not go on to test a half-trained model. An empty message prints
    nothing (the other ranks of a torchrun run, whose rank 0 says it).
    """
