"""Model weights from the Hugging Face hub into a volume cache shared by several workers.

- ``api``: the hub's HTTP API (file listing with sizes and hashes, file downloads), clear errors.
- ``layout``: the Hugging Face cache layout (blobs, snapshots, refs) plus our own state beside it.
- ``integrity``: hashes and "verified" stamps, so a warm boot trusts a blob without rereading it.
- ``lock``: one lock file per blob that works on network filesystems (O_EXCL, heartbeat, stale).
- ``transfer``: one blob downloaded once, resumed, verified, published by an atomic rename.
- ``manifest``: the complete-set marker that lets a warm boot skip the hub entirely.
- ``runpod``: Runpod's own read-only model cache.

``runtime.fetch`` ties them together; nothing here knows about pipelines.
"""
