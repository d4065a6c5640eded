"""The snapshot catalog of a store: snapshot ids, manifests (written last = commit), listing committed
snapshots, telling debris apart, and choosing what retention keeps. Everything read from a store is
untrusted: manifests are size-limited and schema-validated before use."""
