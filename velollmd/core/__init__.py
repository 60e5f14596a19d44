"""The request path: pipeline, single-flight, service (route, admit, failover), relay."""
