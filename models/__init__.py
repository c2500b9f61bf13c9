"""Domain and maths of sessionrec: records, codecs, sessions, intents, ranking, index, artifact.

Nothing here touches Kafka, faust, torch or the process environment.
"""
