"""Shared machinery for the tests, the notebooks and the benchmarks.

It starts real gunicorn servers for a step folder, talks SSE to them and
measures their process tree. Nothing in here is part of the tutorial's code.
"""
