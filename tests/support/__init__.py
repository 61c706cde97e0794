"""Helpers the tests share, not tests: the fault-injecting S3 proxy, the Kubernetes pod translator,
tiny models with a real vocabulary, the rotten_tomatoes subset writer."""
