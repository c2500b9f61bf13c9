"""Kafka side of sessionrec: the faust worker, topics, the embedded broker, replay and tail."""
