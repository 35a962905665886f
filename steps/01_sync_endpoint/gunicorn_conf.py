"""Gunicorn settings. Run with: gunicorn -c gunicorn_conf.py main:app"""

bind = "127.0.0.1:8000"
# Gunicorn's native ASGI worker serves FastAPI directly.
worker_class = "asgi"
# One HTTP worker, so that the blocking problem is plain to see.
workers = 1
# Gunicorn 27 opens a control socket in ~/.gunicorn by default; two servers
# on one machine would fight over it, and this tutorial does not need it.
control_socket_disable = True
accesslog = "-"
