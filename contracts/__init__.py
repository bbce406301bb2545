"""What crosses process boundaries: settings, Redis key names, message schemas, task names.

Every part of the platform imports this package; no part imports another part's internals.
"""
