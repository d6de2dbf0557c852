"""stopline's local cluster: the real control plane, a local kubelet, Prometheus and an S3 server, all as
processes on 127.0.0.x, for `make demo`, `make up`, bench/ and the tests."""
