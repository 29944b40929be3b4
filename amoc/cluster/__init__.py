"""The cluster: a master that drives slave nodes over ZeroMQ with CURVE keys.

- `protocol`: message kinds and their msgpack frames, with size and shape checks;
- `dispatch`: how user ids are spread over nodes (pure, pluggable);
- `keys`: the cluster's CURVE key files;
- `master` / `slave`: the two ends, each living in its node's event loop.
"""
