"""`userdata` as in Colab: get() asks for permission to read one of the user's secrets."""

from google.colab import dialog


def get(key):
    """A permission dialog, then the secret (none here)."""
    dialog("userdata.get", key)
    raise KeyError(key)
