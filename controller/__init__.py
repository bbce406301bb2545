"""The controller: desired state in SQL, the JSON API under /v1, and the health manager."""
