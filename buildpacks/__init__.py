"""Staging: the Celery worker on queue ``staging`` and the buildpacks it runs."""
