"""Small TTL key-value caches (Redis shared by replicas, or in process) for the pipeline's summaries, response
cache and tier stickiness. Its own package: it is storage, neither a routing decision nor an upstream call."""
