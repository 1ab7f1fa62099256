"""The Connector operator: consumer Deployments for kafkaSource Connectors, and every Connector's Ready/Degraded."""
