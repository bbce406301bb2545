# The platform's own image, for docker-compose.yml on a host that can pull base images.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends nginx iptables \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/paas
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY controller controller
COPY buildpacks buildpacks
COPY dea_agent dea_agent
COPY router router
COPY cli cli
COPY launcher launcher
COPY confinement confinement
COPY uploads uploads
COPY logpipe logpipe
RUN pip install --no-cache-dir '.[postgres]'
