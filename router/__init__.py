"""The router's control plane: render nginx config from the route table in Redis, reload nginx.

``render`` is pure (routes in, nginx.conf text out); ``nginx`` runs the nginx process;
``main`` is the ``paas-router`` control loop.
"""
