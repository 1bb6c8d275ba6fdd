"""Errors that describe bad user input (a spec value, a dataset path, an image file).

The command line prints them as one line and exits with code 2; anything else is a bug and keeps
its traceback.
"""


class UserInputError(Exception):
    """Bad input from the user, with a message that names the offending value, path or field."""
