"""The stager: the process (``python -m buildpacks.stager``, ``paas-stager``) that turns an
uploaded package into a droplet and an image.

- ``__main__``: the Celery worker on queue ``staging`` (what the process runs);
- ``staging``: one build, from the package to the droplet image (:class:`Stager`).
"""
