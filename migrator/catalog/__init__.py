"""The snapshot catalog of a store: ids, manifests, listing, debris, parents, retention, signatures.

Everything read from a store is untrusted: manifests are size-limited and schema-validated before use."""
