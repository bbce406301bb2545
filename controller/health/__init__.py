"""The health manager, a process of its own (``python -m controller.health``):

- ``__main__``: the process (the loop, its metrics, garbage collection);
- ``manager``: :class:`~controller.health.manager.HealthManager`, one tick after another;
- ``watch``: what it sees happen to instances, told on the apps' event streams.
"""
