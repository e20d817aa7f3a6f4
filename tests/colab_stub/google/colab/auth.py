"""`auth` as in Colab: authenticate_user() asks the user to sign in."""

from google.colab import dialog


def authenticate_user(clear_output=True, project_id=None):
    """A sign-in dialog."""
    dialog("auth.authenticate_user")
