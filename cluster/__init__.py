"""Several replicas of one server: reconciling a replica with the head store, onboarding across
replicas, the HAProxy router in front (docs/cluster.md)."""
