"""The agent: runs app instances on one host with the Docker SDK, and reports them."""
