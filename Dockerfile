# An amoc node in a container: the bundle `make deploy` ships (tools/bundle.py), installed
# the same way (a venv from the bundle's wheels, no package index) and laid out the same way
# (ansible/roles/amoc/files/make_release.py). NOT TESTED: the project's machines have no
# container runtime; the tested path to many machines is `make prepare` / `make deploy`.
#
#   docker build -t amoc-node .
#   docker run -d --name s1 --ulimit nofile=1048576 --network host \
#       -v "$PWD/_build/keys:/keys:ro" -e AMOC_CLUSTER_KEYS=/keys \
#       -e AMOC_CLUSTER_ROLE=slave -e AMOC_CLUSTER_MASTER=tcp://10.0.0.1:4200 \
#       amoc-node --name s1 _daemon
#
# The keys directory holds the cluster's keys from `make deploy` (_build/keys): a slave
# needs node.key_secret and master.key, the master master.key_secret and node.key. Node
# names are NAME@<container host name>: give each container its own (--hostname).
# Settings come from the environment (AMOC_<NAME>), as on any node.

FROM debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /build-venv \
    && /build-venv/bin/python /src/tools/bundle.py --out /out \
    && mkdir /bundle \
    && tar -xzf /out/amoc-*.tar.gz -C /bundle --strip-components=1

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --shell /bin/bash amoc
COPY --from=build --chown=amoc:amoc /bundle /home/amoc/releases/bundle
COPY --chown=amoc:amoc ansible/roles/amoc/files/make_release.py /home/amoc/releases/make_release.py
USER amoc
WORKDIR /home/amoc
RUN python3 -m venv --without-pip releases/bundle/venv \
    && releases/bundle/venv/bin/python releases/bundle/pip.whl/pip install --quiet \
        --no-index --find-links releases/bundle/wheels amoc \
        --requirement releases/bundle/requirements.txt \
    && python3 releases/make_release.py /home/amoc/releases/amoc /home/amoc/releases/bundle \
        /home/amoc/var/amoc \
    && ln -s releases/amoc amoc
ENTRYPOINT ["/home/amoc/amoc/bin/amoc"]
# The node in the foreground, as `bin/amoc start` runs it in the background.
CMD ["--name", "s1", "_daemon"]
