"""Gunicorn settings for step 02. Run with: gunicorn -c gunicorn_conf.py main:app"""

bind = "127.0.0.1:8000"
# Gunicorn's native ASGI worker serves FastAPI directly.
worker_class = "asgi"
# One HTTP worker, as in step 01: it no longer blocks, so it is enough.
workers = 1
# The model runs in dirty workers: each loads it once and answers one
# request at a time.
dirty_apps = ["chat_app:ChatApp"]
dirty_workers = 2
# Gunicorn 27 opens a control socket in ~/.gunicorn by default; two servers
# on one machine would fight over it, and this tutorial does not need it.
control_socket_disable = True
# Gunicorn 27 also keeps the dirty arbiter's pid in a file named after the
# process name, and a server that starts kills the arbiter that file names:
# a name of its own lets two steps run side by side.
proc_name = "dirty-chat-02"
accesslog = "-"
