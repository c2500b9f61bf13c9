"""Benchmarks of sessionrec against its peers, apart from the code they measure: quality
(SR-GNN protocol, gensim, V-SkNN), training time, the index, the stream worker and the embedded
broker, and the report that puts them side by side (`sessionrec bench`)."""
