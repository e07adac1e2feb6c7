"""Observability beyond TensorBoard: training metrics as Ray metrics (scraped by Prometheus from each node's metrics
agent), and `tuneforge monitor`, which runs Prometheus on Ray's service discovery and writes a Grafana folder."""
