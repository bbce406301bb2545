"""Docker labels: the names the platform gives every container, image, volume and network it
makes, and finds them by (never by name).

Each label is defined here once; its value is a string. Every thing carries
``LABEL_PLATFORM`` (the platform's id: a sandbox's or ``make up``'s things are told apart
and cleaned up by it) and ``LABEL_KIND`` (one of the ``KIND_*`` values below).

========================  ==================================================================
kind                      its other labels, and who sets and reads them
========================  ==================================================================
``instance`` container    agent, app guid and name, process type, index, instance guid,
                          release, host port, routes, start timeout, started at, memory,
                          disk, generation, health check, output folder: the agent writes
                          them (``dea_agent/instances.py``) and reads them back when it
                          adopts its containers after a restart
``task`` container        agent, app guid and name, release, task guid (``dea_agent/tasks.py``)
``staging`` container     app guid (the stager's compile container)
``cache`` volume          app guid (an app's build cache, the stager's)
``droplet`` image         app guid (the stager builds it; the collector, ``controller/gc.py``,
                          removes it by age and use)
``stack`` image           none (``contracts/stack_recipe/build.sh`` sets it by hand)
``network`` network       team (``confinement/networks.py``)
``bench`` container       none (``bench/``: throw-away load generators)
========================  ==================================================================
"""

from __future__ import annotations

# Every thing.
LABEL_PLATFORM = "paas.platform"
LABEL_KIND = "paas.kind"

# Apps' things: instances, tasks, staging containers, build caches, droplet images.
LABEL_APP_GUID = "paas.app_guid"
LABEL_APP_NAME = "paas.app_name"
LABEL_RELEASE = "paas.release"
LABEL_AGENT = "paas.agent"  # the agent that started the container

# Instances: what the agent needs to take one over after a restart.
LABEL_PROCESS = "paas.process_type"
LABEL_INDEX = "paas.instance_index"
LABEL_INSTANCE = "paas.instance_guid"
LABEL_HOST_PORT = "paas.host_port"
LABEL_ROUTES = "paas.routes"  # JSON: the instance's route URLs
LABEL_START_TIMEOUT = "paas.start_timeout"
LABEL_STARTED_AT = "paas.started_at"
LABEL_MEMORY = "paas.memory_mb"
LABEL_DISK = "paas.disk_mb"
LABEL_GENERATION = "paas.generation"
LABEL_HEALTH_CHECK = "paas.health_check"  # JSON: type, endpoint, interval, probe timeout
LABEL_OUTPUT = "paas.output_dir"  # the host folder of the instance's stdout and stderr files

# Tasks (``paas run``).
LABEL_TASK = "paas.task_guid"

# Networks: the team whose instances a network holds.
LABEL_TEAM = "paas.team"

# Values of LABEL_KIND.
KIND_INSTANCE = "instance"
KIND_TASK = "task"
KIND_STAGING = "staging"
KIND_CACHE = "cache"
KIND_DROPLET = "droplet"
KIND_STACK = "stack"
KIND_NETWORK = "network"
KIND_BENCH = "bench"

