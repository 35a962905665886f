"""A test-only gunicorn config: the step's settings, with the model split into two apps of one worker each.

tests/steps/test_routing.py starts it to show that gunicorn's per-app worker limits
cannot pin chats to distinct dirty workers: the first worker loads every app
still below its limit, so both apps land on it and no second worker starts.
"""

from chat_app import ChatApp
from gunicorn_conf import *  # noqa: F403  (the step's own settings)

dirty_apps = ["chat_app:ChatApp:1", "routing_conf:SecondChatApp:1"]


class SecondChatApp(ChatApp):
    """The same model under a second import path, limited to one worker too."""
